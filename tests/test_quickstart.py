"""The quickstart works as written: a new user's path, from ``pip install`` to a completed run
and passing tests, in a brand-new ``startproject``.

In a temporary directory the test makes a virtual environment (``python -m venv``), copies this
checkout (the user's ``/path/to/django-workflows``; a copy, so the wheel build's ``build/`` does
not land in the repository), and then walks ``docs/quickstart.md`` top to bottom, doing what
each fenced block says:

=====================================  =========================================================
block                                  what the test does
=====================================  =========================================================
```bash                                each line is run in the project directory, with the venv
                                       first on PATH (as after ``source venv/bin/activate``):
                                       literally, except ``/path/to/django-workflows`` is the
                                       copy, ``pip install`` gets ``--quiet``, ``runworkers``
                                       gets ``--burst`` (exit once nothing is due), and
                                       ``RUN_ID`` is the id ``workflows runs`` printed last
```python / ```ini whose first line    written to that file (after an optional
is ``# <path>``                        ``# not-run: ...`` line, which the docs test reads);
                                       ``# mysite/settings.py`` is appended to the settings
                                       startproject wrote, so its assignments replace them
```python whose first line is          run with ``python manage.py shell -c``
``# python manage.py shell``
```text with ``CommandError:``         ``runworkers --burst`` run at that point (before
                                       ``migrate``): exits non-zero, printing that one line
```text with ``ConnectionRefusedError``  checked last: the project without its EMAIL_BACKEND
                                       (settings that import mysite.settings and delete it)
                                       sends an event and runs a burst worker
```text with worker log lines          the last ``runworkers --burst`` output, or a new one
other ```text                          the output of the command just before it
=====================================  =========================================================

A ```text block matches when each of its lines is a line of the output, once times, ids,
durations, worker names and runs of spaces are normalised. The test prints a timed transcript
(``pytest -s`` shows it) and saves it as ``transcript.txt`` in its temporary directory and as
``django-workflows-quickstart-transcript.txt`` in the system's temporary directory.

It needs the package index that ``pip`` uses (skipped with a message when unreachable). SQLite
only: on the PostgreSQL run of ``bin/test`` it is skipped, having run on the SQLite one.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="the walk uses POSIX venv paths"),
]

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"
PACKAGE_PLACEHOLDER = "/path/to/django-workflows"
NOT_RUN = "# not-run:"

# Not copied into the user's checkout: local state, caches, build output.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "site",
    ".pytest_cache", ".ruff_cache", "db.sqlite3*", "results",
)
# Settings and variables of this test session that a new user's shell does not have.
ENV_DROP = ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DATABASE_URL",
            "SQLITE_PATH", "SQLITE_TEST_PATH", "EMAIL_BACKEND", "PYTEST_ADDOPTS", "PYTEST_PLUGINS",
            "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER")
ENV_DROP_PREFIXES = ("DJANGO_", "WORKFLOWS_")
# pip lines about this machine's own configuration (missing local mirrors), not the install.
PIP_NOISE = re.compile(r"^WARNING: Location '.*' is ignored")


# -- the page --------------------------------------------------------------------------------------


@dataclass
class Block:
    language: str
    line: int  # 1-based line of the block's first code line in quickstart.md
    text: str

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def target(self) -> str | None:
        """The ``# <path>`` (or ``# python manage.py shell``) comment that says where it goes."""
        lines = [line for line in self.lines if line.strip()]
        if lines and lines[0].startswith(NOT_RUN):
            lines = lines[1:]
        if lines and lines[0].startswith("# "):
            return lines[0][2:].strip()
        return None

    def where(self) -> str:
        return f"quickstart.md:{self.line}"


_FENCE = re.compile(r"^(`{3,})([\w+-]*)\s*$")


def page_blocks() -> list[Block]:
    lines = QUICKSTART.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        blocks.append(Block(language, index + 2, "\n".join(lines[index + 1 : end]) + "\n"))
        index = end + 1
    return blocks


# -- comparing shown output with real output -------------------------------------------------------

_UNIT = r"(?:ms|min|s|m|h|d)\b"
_NORMALISE = [
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d\d:\d\d| UTC)?"), "<time>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"\bworker [^\s:]+:\d+:[0-9a-f]+"), "worker <worker>"),
    (re.compile(rf"\d+(?:\.\d+)?\s?{_UNIT}(?:\s\d+(?:\.\d+)?\s?{_UNIT})*"), "<duration>"),
    (re.compile(r"\(\d+ migration\(s\) not applied\)"), "(<n> migration(s) not applied)"),
    (re.compile(r"={2,}"), "="),
    (re.compile(r"\s+"), " "),
]


def normalise(line: str) -> str:
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return line.strip()


def assert_shown(block: Block, output: str, what: str) -> None:
    real = {normalise(line) for line in output.splitlines()}
    missing = [line for line in block.lines if line.strip() and normalise(line) not in real]
    assert not missing, (
        f"{block.where()}: the page shows lines that {what} did not print:\n  "
        + "\n  ".join(missing)
        + f"\n--- what it printed:\n{output}"
    )


# -- running commands, with a transcript ----------------------------------------------------------


@dataclass
class Step:
    shown: str  # the command as the page (or the note) writes it
    ran: list[str]
    seconds: float
    returncode: int
    output: str  # stdout and stderr, interleaved as a terminal shows them


@dataclass
class Walk:
    base: Path
    project: Path
    venv: Path
    checkout: Path
    env: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def run(self, shown: str, argv: list[str], *, expect_ok: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> Step:
        begin = time.monotonic()
        try:
            done = subprocess.run(
                argv, cwd=cwd or self.project, env=env or self.env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
            returncode, output = done.returncode, done.stdout
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            returncode, output = -1, partial + f"\n[timed out after {timeout:.0f} s]"
        output = "\n".join(line for line in output.splitlines() if not PIP_NOISE.match(line))
        step = Step(shown, argv, time.monotonic() - begin, returncode, output)
        self.steps.append(step)
        print(self.format(step, limit=14), flush=True)
        if expect_ok:
            assert returncode == 0, f"`{shown}` failed (exit {returncode}):\n{output}"
        return step

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.steps.append(Step(f"# {text}", [], 0.0, 0, ""))
        print(f"# {text}", flush=True)

    def format(self, step: Step, limit: int | None = None) -> str:
        if not step.ran:
            return step.shown
        head = f"$ {step.shown}    [{step.seconds:.1f} s, exit {step.returncode}]"
        lines = step.output.splitlines()
        if limit is not None and len(lines) > limit:
            lines = [*lines[: limit - 2], f"... ({len(lines) - limit + 1} more lines)", lines[-1]]
        return "\n".join([head, *(f"    {line}" for line in lines)])

    def transcript(self) -> str:
        total = time.monotonic() - self.started
        slowest = sorted((s for s in self.steps if s.ran), key=lambda s: -s.seconds)[:3]
        return "\n".join([
            f"django-workflows quickstart, walked in {self.base}",
            f"total {total:.1f} s; slowest: "
            + ", ".join(f"`{s.shown}` {s.seconds:.1f} s" for s in slowest),
            "",
            *(self.format(step) for step in self.steps),
            "",
        ])

    # the page's commands --------------------------------------------------------------------

    def command(self, line: str, last_run_id: str | None) -> Step:
        argv = shlex.split(line)
        ran = list(argv)
        if argv[:2] == ["pip", "install"]:
            ran = [*argv[:2], "--quiet", *(a.replace(PACKAGE_PLACEHOLDER, str(self.checkout))
                                          for a in argv[2:])]
        if argv[:3] == ["python", "manage.py", "runworkers"]:
            ran.append("--burst")
        if "RUN_ID" in argv:
            assert last_run_id, f"`{line}`: no run id printed before it"
            ran = [last_run_id if a == "RUN_ID" else a for a in ran]
        ran[0] = shutil.which(ran[0], path=self.env["PATH"]) or ran[0]
        timeout = 600 if argv[:2] == ["pip", "install"] else 120
        return self.run(line, ran, timeout=timeout)

    def burst_worker(self, *, expect_ok: bool = True, env: dict[str, str] | None = None) -> Step:
        python = str(self.venv / "bin" / "python")
        return self.run("python manage.py runworkers --burst",
                        [python, "manage.py", "runworkers", "--burst"], expect_ok=expect_ok, env=env)


def user_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ENV_DROP and not k.startswith(ENV_DROP_PREFIXES)}
    here = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != here]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    env["COLUMNS"] = "80"
    return env


def index_address() -> tuple[str, int] | None:
    """Host and port of the index pip installs from: pip's configured index-url, or PyPI."""
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
    found = re.findall(r"^\S*\.index-url='([^']+)'", configured, re.M)
    url = urlparse(os.environ.get("PIP_INDEX_URL") or (found[-1] if found else "https://pypi.org/simple/"))
    if url.scheme == "file":
        return None  # a local index: nothing to reach
    return url.hostname or "pypi.org", url.port or (443 if url.scheme == "https" else 80)


def port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


# -- the test --------------------------------------------------------------------------------------


def test_the_quickstart_as_written(tmp_path: Path) -> None:
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("the quickstart test builds its own SQLite project; it ran on the SQLite run")
    index = index_address()
    if index is not None:
        try:
            socket.create_connection(index, timeout=5).close()
        except OSError as exc:
            message = (f"cannot reach the package index {index[0]}:{index[1]} ({exc}): this test "
                       "installs django-workflows and its dependencies with pip, as the quickstart does")
            if os.environ.get("CI") == "true":
                pytest.fail(message)  # CI reaches the index: an unreachable one is a failure there
            pytest.skip(message)

    venv, checkout, project = tmp_path / "venv", tmp_path / "django-workflows", tmp_path / "project"
    project.mkdir()
    walk = Walk(tmp_path, project, venv, checkout, user_env(venv))
    print(f"\n# the quickstart, in {tmp_path}", flush=True)

    begin = time.monotonic()
    shutil.copytree(ROOT, checkout, ignore=COPY_IGNORE)
    walk.note(f"copied the checkout to {checkout} in {time.monotonic() - begin:.1f} s")
    walk.run("python -m venv venv", [sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)

    last: Step | None = None  # the page's last command
    last_worker: Step | None = None  # the last runworkers, if nothing ran after it
    run_id: str | None = None
    smtp_block: Block | None = None
    checked = {"forgot-migrate": False, "first-worker": False, "runs": False, "tests": False}

    for block in page_blocks():
        target = block.target()
        if block.language == "bash":
            for line in block.lines:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                last = walk.command(line.strip(), run_id)
                last_worker = last if "runworkers" in line else None
                ids = re.findall(r"^([0-9a-f-]{36})\s+welcome-new-user", last.output, re.M)
                if line.startswith("python manage.py workflows runs"):
                    assert ids, f"`{line}` listed no welcome-new-user run:\n{last.output}"
                    run_id = ids[0]
                    assert re.search(rf"^{run_id}\s+welcome-new-user\s+running\s.*sleep 'wait-a-day'",
                                     last.output, re.M), last.output
                    checked["runs"] = True
                if line.startswith("python -m pytest"):
                    assert re.search(r"\b2 passed\b", last.output), last.output
                    checked["tests"] = True
        elif block.language in ("python", "ini") and target == "python manage.py shell":
            python = str(venv / "bin" / "python")
            last = walk.run(f"python manage.py shell  <<< {block.where()}",
                            [python, "manage.py", "shell", "-c", block.text])
            last_worker = None
        elif block.language in ("python", "ini") and target:
            path = project / target
            assert path.parent.is_dir(), f"{block.where()}: {target}: no such directory"
            if target == "mysite/settings.py":
                with path.open("a") as settings_file:
                    settings_file.write("\n\n" + block.text)
                walk.note(f"appended {block.where()} to {target}")
            else:
                path.write_text(block.text)
                walk.note(f"wrote {target} from {block.where()}")
        elif block.language in ("python", "ini"):
            pytest.fail(f"{block.where()}: a {block.language} block that does not say where it "
                        "goes (first line `# <path>` or `# python manage.py shell`)")
        elif block.language == "text" and "CommandError:" in block.text:
            step = walk.burst_worker(expect_ok=False)
            assert step.returncode != 0, step.output
            assert len(step.output.strip().splitlines()) == 1, (
                "one line, not a traceback:\n" + step.output
            )
            assert "python manage.py migrate" in step.output, step.output
            assert_shown(block, step.output, "runworkers before migrate")
            checked["forgot-migrate"] = True
        elif block.language == "text" and "ConnectionRefusedError" in block.text:
            smtp_block = block  # checked at the end: it is what the page's settings avoid
        elif block.language == "text" and "django_workflows.worker:" in block.text:
            step = last_worker or walk.burst_worker()
            last_worker = None
            assert_shown(block, step.output, "runworkers --burst")
            if not checked["first-worker"]:
                assert re.search(r"django-workflows \S+: \d+ process(es)? x \d+ threads", step.output)
                assert "run started: welcome-new-user" in step.output, step.output
                checked["first-worker"] = True
        elif block.language == "text":
            assert last is not None, f"{block.where()}: output shown before any command"
            assert_shown(block, last.output, f"`{last.shown}`")
        else:
            pytest.fail(f"{block.where()}: a ```{block.language} block this test cannot follow")

    assert all(checked.values()), f"parts of the walk the page no longer has: {checked}"

    # Without the page's EMAIL_BACKEND: Django's default SMTP backend and no mail server.
    assert smtp_block is not None, "the page no longer shows the SMTP failure"
    if port_open("localhost", 25):
        walk.note("localhost:25 accepts connections here: the SMTP failure is not checked")
    else:
        (project / "mysite" / "settings_smtp.py").write_text(
            "from mysite.settings import *  # noqa: F403\n\ndel EMAIL_BACKEND  # noqa: F821\n"
        )
        walk.note("without EMAIL_BACKEND (mysite/settings_smtp.py deletes it): SMTP to localhost:25")
        smtp_env = {**walk.env, "DJANGO_SETTINGS_MODULE": "mysite.settings_smtp"}
        python = str(venv / "bin" / "python")
        data = '{"user_id": 2, "email": "bob@example.com"}'
        walk.run(f"python manage.py workflows send accounts/user.signed_up --data '{data}'",
                 [python, "manage.py", "workflows", "send", "accounts/user.signed_up", "--data", data],
                 env=smtp_env)
        step = walk.burst_worker(env=smtp_env)
        assert_shown(smtp_block, step.output, "runworkers --burst with the SMTP backend")

    transcript = walk.transcript()
    (tmp_path / "transcript.txt").write_text(transcript)
    shared = Path(tempfile.gettempdir()) / "django-workflows-quickstart-transcript.txt"
    shared.write_text(transcript)
    print(f"\n{transcript.splitlines()[1]}\ntranscript: {tmp_path / 'transcript.txt'} and {shared}")
