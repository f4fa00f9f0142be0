"""The pytest plugin and WorkflowsTestMixin put the engine's clock back after each test."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import SimpleTestCase
from django.utils import timezone

from django_workflows.engine import clock
from django_workflows.testing import WorkflowsTestMixin

ROOT = Path(__file__).resolve().parent.parent

# Two tests in one file, run in order: the first moves the clock as
# drain(advance_time=True) does, the second needs it back at real time and moves it
# again; teardown_module, after the last test's fixtures, sees whether that was undone.
# A module-scoped fixture moves it before the first test, as a shared setup might.
LEAKY_TESTS = '''
from datetime import timedelta

import pytest
from django.utils import timezone

from django_workflows.engine import clock


def at_real_time():
    return abs(clock.now() - timezone.now()) < timedelta(seconds=5)


@pytest.fixture(scope="module", autouse=True)
def moved_before_the_first_test():
    clock.advance_to(timezone.now() + timedelta(days=1))


def test_first_moves_the_clock_three_days_ahead():
    assert at_real_time()
    clock.advance_to(timezone.now() + timedelta(days=3))
    assert not at_real_time()


def test_second_sees_real_time():
    assert at_real_time()
    clock.advance_to(timezone.now() + timedelta(days=3))


def teardown_module():
    assert at_real_time(), "the last test's clock move was not undone"
'''


def run_pytest(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on LEAKY_TESTS as a project using this package would: the plugin comes
    from the installed entry point, and this repository's conftest.py (which resets the
    clock itself) and pytest settings are not loaded."""
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "testproject")])
    command = [
        sys.executable, "-m", "pytest", str(tmp_path / "test_leaky.py"),
        "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
        "-p", "no:cacheprovider", "-v", *options,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_plugin_puts_the_clock_back_after_each_test(tmp_path):
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout and "error" not in result.stdout
    assert "conftest" not in result.stdout + result.stderr


def test_without_the_plugin_the_moved_clock_leaks_into_the_next_test(tmp_path):
    """Proves the test above can fail: the same two tests, the plugin disabled."""
    result = run_pytest(tmp_path, "-p", "no:django_workflows")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "test_first_moves_the_clock_three_days_ahead FAILED" in result.stdout
    assert "test_second_sees_real_time FAILED" in result.stdout


def test_the_plugin_module_imports_before_django_is_configured():
    """pytest imports plugins before pytest-django sets Django up."""
    check = (
        "import sys\n"
        "import django_workflows.pytest_plugin\n"
        "from django.conf import settings\n"
        "assert not settings.configured, 'settings were read'\n"
        "assert 'django_workflows.models' not in sys.modules, 'models were imported'\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# -- WorkflowsTestMixin --------------------------------------------------------------------------


class _Base(unittest.TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.base_set_up = True


@pytest.mark.parametrize("base", [_Base, SimpleTestCase], ids=["unittest", "django"])
def test_the_mixin_puts_the_clock_back_after_each_test(base):
    seen: dict[str, timedelta] = {}

    class ClockTests(WorkflowsTestMixin, base):
        def test_1_moves_the_clock(self) -> None:
            clock.advance_to(timezone.now() + timedelta(days=3))

        def test_2_fails_with_the_clock_moved(self) -> None:
            clock.advance_to(timezone.now() + timedelta(days=5))
            self.fail("a failing test's clock is put back too")

        def test_3_starts_at_real_time(self) -> None:
            seen["offset"] = clock.now() - timezone.now()
            if base is _Base:
                assert self.base_set_up  # the mixin's setUp called the TestCase's
            clock.advance_to(timezone.now() + timedelta(days=1))  # undone by the cleanup

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(ClockTests).run(result)

    assert result.testsRun == 3 and not result.errors
    assert [test.id().rsplit(".", 1)[-1] for test, _ in result.failures] == ["test_2_fails_with_the_clock_moved"]
    assert abs(seen["offset"]) < timedelta(seconds=5)
    assert abs(clock.now() - timezone.now()) < timedelta(seconds=5)  # the last test's move too


def test_without_the_mixin_the_clock_stays_moved():
    """Proves the test above can fail."""

    class ClockTests(unittest.TestCase):
        def test_moves_the_clock(self) -> None:
            clock.advance_to(timezone.now() + timedelta(days=3))

    unittest.defaultTestLoader.loadTestsFromTestCase(ClockTests).run(unittest.TestResult())
    assert clock.now() - timezone.now() > timedelta(days=2)
