"""The documentation's examples run, and its reference tables match the code.

Convention for ```python blocks in README.md and docs/*.md:

* Every block runs. The blocks of one page run in order, in one module namespace,
  inside a ``django_db`` test, against an empty function registry (the demo
  project's functions are set aside, so the examples see only their own).
* Each block starts with the engine's clock at real time (``reset_clock()``), as
  if it were a test of its own.
* A ``test_*`` function that a block defines is called right after the block,
  with the pytest fixtures its parameters name (``settings``, ``mailoutbox`` ...),
  as if it were a test of its own: in a savepoint rolled back afterwards, with an
  empty mail outbox and the engine's clock at real time.
* A block whose first line is ``# not-run: <reason>`` is only compiled. Keep
  that for code a test cannot run (one needing a second database, say); settings
  snippets run fine, as plain assignments.
"""

from __future__ import annotations

import ast
import inspect
import random
import re
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core import mail
from django.db import transaction

import django_workflows as wf
from django_workflows import checks, conf
from django_workflows.engine import backoff
from django_workflows.functions import registry
from django_workflows.testing import reset_clock

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SOURCES = [ROOT / "README.md", *PAGES]
NOT_RUN = "# not-run:"

# Pages whose main example must be runnable code (at least this many blocks run).
MIN_RUNNABLE = {
    "README.md": 2,
    "index.md": 1,
    "quickstart.md": 3,
    "functions-and-steps.md": 8,
    "waits-and-parallel.md": 4,
    "cron-and-run-control.md": 5,
    "retries-and-errors.md": 5,
    "workers-and-deployment.md": 3,
    "testing.md": 4,
}


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    source: str

    @property
    def runs(self) -> bool:
        return not self.source.lstrip().startswith(NOT_RUN)

    def compiled(self) -> types.CodeType:
        # Padding keeps the Markdown file's line numbers in tracebacks.
        return compile("\n" * (self.line - 1) + self.source, str(self.path), "exec")


_FENCE = re.compile(r"^(`{3,})([\w+-]*)\s*$")


def python_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        assert end < len(lines), f"{path.name}:{index + 1}: unclosed code fence"
        if language == "python":
            blocks.append(Block(path, index + 2, "\n".join(lines[index + 1 : end]) + "\n"))
        index = end + 1
    return blocks


def _label(path: Path) -> str:
    return path.name


# -- running the examples ------------------------------------------------------------------------


@pytest.fixture
def empty_registry():
    """The examples define their own functions; conftest restores the project's after the test."""
    for function in registry.all():
        registry.unregister(function.id)


@pytest.mark.django_db
@pytest.mark.parametrize("path", SOURCES, ids=_label)
def test_examples_run(path: Path, request: pytest.FixtureRequest, empty_registry: None) -> None:
    module = types.ModuleType(f"docs_examples.{path.stem.replace('-', '_')}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses and pickling look modules up
    try:
        for block in python_blocks(path):
            code = block.compiled()
            if not block.runs:
                continue
            reset_clock()
            before = dict(module.__dict__)
            try:
                exec(code, module.__dict__)
                for name, value in list(module.__dict__.items()):
                    if (
                        name.startswith("test_")
                        and callable(value)
                        and before.get(name) is not value
                    ):
                        run_example_test(value, request)
            except Exception:
                failure = traceback.format_exc()  # its frames show the Markdown lines themselves
            else:
                continue
            pytest.fail(
                f"the example at {path.name}:{block.line} failed:\n{failure}", pytrace=False
            )
    finally:
        sys.modules.pop(module.__name__, None)


def run_example_test(test: types.FunctionType, request: pytest.FixtureRequest) -> None:
    fixtures = {name: request.getfixturevalue(name) for name in inspect.signature(test).parameters}
    mail.outbox.clear()
    reset_clock()
    with transaction.atomic():
        test(**fixtures)
        transaction.set_rollback(True)
    reset_clock()


@pytest.mark.parametrize("path", SOURCES, ids=_label)
def test_enough_examples_run(path: Path) -> None:
    runnable = [b for b in python_blocks(path) if b.runs]
    assert len(runnable) >= MIN_RUNNABLE.get(path.name, 1), (
        f"{path.name}: only {len(runnable)} runnable python blocks; its main examples must run"
    )


@pytest.mark.parametrize("path", SOURCES, ids=_label)
def test_no_python_hidden_from_the_runner(path: Path) -> None:
    """Indented or ```py fences would be skipped silently: use top-level ```python fences."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        assert not re.match(r"^\s+`{3,}\s*py", line), f"{path.name}:{number}: indented python fence"
        assert not re.match(r"^`{3,}\s*(py|python3|pycon)\s*$", line), (
            f"{path.name}:{number}: use ```python"
        )


def test_every_page_is_in_the_navigation() -> None:
    yaml = pytest.importorskip("yaml")  # installed with mkdocs (the "dev" extra)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        if isinstance(nav, list):
            return [p for value in nav for p in pages(value)]
        return []

    assert sorted(pages(config["nav"])) == sorted(p.name for p in PAGES)


# -- the README ----------------------------------------------------------------------------------


def test_readme_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("# ")
    first_fence = next(i for i, line in enumerate(lines) if line.startswith("```"))
    prose = [line for line in lines[1:first_fence] if line.strip()]
    assert len(prose) == 1, "only a one-line description comes between the title and the commands"
    end = next(i for i in range(first_fence + 1, len(lines)) if lines[i].startswith("```"))
    commands = [line.split("#")[0].strip() for line in lines[first_fence + 1 : end] if line.strip()]
    assert commands == ["bin/demo", "bin/test"]
    assert (ROOT / "bin" / "demo").exists() and (ROOT / "bin" / "test").exists()


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


# -- reference tables against the code -----------------------------------------------------------


def _table_rows(page: str, heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` (cells stripped, header and rule dropped)."""
    text = (DOCS / page).read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"{page}: no heading {heading!r}"
    rows = []
    for line in text[match.end() :].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]


def test_settings_table_matches_conf() -> None:
    rows = _table_rows("workers-and-deployment.md", "Settings")
    documented = {row[0].strip("`"): ast.literal_eval(row[1].strip("`")) for row in rows}
    assert documented == conf.DEFAULTS


def test_backoff_table_matches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _table_rows("retries-and-errors.md", "Backoff")
    monkeypatch.setattr(random, "random", lambda: 0.0)
    for failures, delay in rows:
        count = int(failures.split()[0])
        assert backoff.retry_delay(count) == wf.parse_duration(delay), (failures, delay)
    last = int(rows[-1][0].split()[0])
    assert backoff.retry_delay(last + 50) == wf.parse_duration(rows[-1][1])  # the cap
    monkeypatch.setattr(random, "random", lambda: 0.999999)
    assert backoff.retry_delay(1).total_seconds() == pytest.approx(15 * 1.2, rel=1e-4)


def test_every_system_check_is_documented() -> None:
    ids = set(re.findall(r"django_workflows\.[EW]\d{3}", Path(checks.__file__).read_text()))
    text = (DOCS / "workers-and-deployment.md").read_text()
    assert ids and all(check_id in text for check_id in ids), sorted(
        i for i in ids if i not in text
    )


def test_runworkers_options_table_matches_the_command() -> None:
    from django.core.management.base import BaseCommand

    from django_workflows.management.commands.runworkers import Command

    def long_options(command: BaseCommand) -> set[str]:
        parser = command.create_parser("manage.py", "runworkers")
        return {
            o for action in parser._actions for o in action.option_strings if o.startswith("--")
        }

    rows = _table_rows("workers-and-deployment.md", "runworkers")
    documented = {row[0].strip("`").split()[0] for row in rows}
    assert documented == long_options(Command()) - long_options(BaseCommand())


def test_public_names_are_documented() -> None:
    text = "\n".join(p.read_text() for p in PAGES)
    missing = [name for name in wf.__all__ if not re.search(rf"\bwf\.{name}\b", text)]
    assert not missing, f"document these public names in docs/ (as wf.<name>): {missing}"


def test_not_yet_implemented_list_is_still_true() -> None:
    """index.md lists what the contract names but the code lacks; flag entries that landed."""
    text = (DOCS / "index.md").read_text()
    section = text.split("## Not implemented yet", 1)[1].split("\n## ", 1)[0]
    options = set(inspect.signature(wf.function).parameters)
    for option in re.findall(r"`wf\.function\((\w+)=", section):
        assert option not in options, (
            f"wf.function({option}=...) exists now: move it out of 'Not implemented yet'"
        )
    for name in re.findall(r"`wf\.(\w+)", section):
        if name != "function":
            assert not hasattr(wf, name), (
                f"wf.{name} exists now: move it out of 'Not implemented yet'"
            )


# -- one heading per concept ---------------------------------------------------------------------


@pytest.mark.parametrize("path", SOURCES, ids=_label)
def test_no_page_repeats_a_heading(path: Path) -> None:
    """One heading per concept: no two headings of a page (any level, ATX ``#`` or setext
    ``===``/``---``, outside code blocks) have the same text, compared case-insensitively."""
    headings: list[tuple[int, str]] = []
    fence = previous = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if fence:
            if re.fullmatch(rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
                fence = ""
            previous = ""
            continue
        opening = re.match(r" {0,3}(`{3,}|~{3,})", line)
        if opening:
            fence, previous = opening.group(1), ""
            continue
        atx = re.fullmatch(r" {0,3}#{1,6}(?:\s+(.*?))?(?:\s+#+)?\s*", line)
        underline = re.fullmatch(r" {0,3}(=+|-+)\s*", line)
        if atx:
            headings.append((number, atx.group(1) or ""))
            previous = ""
        elif underline and previous.strip() and not re.match(r" {0,3}([-*+>|]|\d+[.)])", previous):
            headings.append((number - 1, previous))
            previous = ""
        else:
            previous = line
    seen: dict[str, int] = {}
    repeated = []
    for number, text in headings:
        key = " ".join(text.split()).casefold()
        if key in seen:
            repeated.append(f"{path.name}:{number}: {text.strip()!r} repeats line {seen[key]}")
        else:
            seen[key] = number
    message = "\n".join(repeated)
    assert not repeated, f"duplicated headings (merge each into one section):\n{message}"
