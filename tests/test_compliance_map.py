"""docs/compliance.md maps every requirement of Wattle's compliance list to the tests that prove it. This keeps the
map honest: every requirement has a row in its own section, every row has a test, and every test it names exists
(read with `ast`, without importing or collecting anything).

The requirement ids are kept here, not read from outside the repository: adding a requirement means adding its id
below and a row to the page."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "compliance.md"

# Each section of the page (as the compliance list groups them) and the requirements it must hold. Promises the
# list makes without a number have a name of their own.
SECTIONS = {
    "Region (APP 8)": ["R-REG-1", "R-REG-2", "R-REG-3"],
    "Redaction (APP 6, APP 11)": ["R-RED-1", "R-RED-2", "R-RED-3"],
    "Audit (ISM-0585, 1815, 1985; APP 11)": ["R-AUD-1", "R-AUD-2", "R-AUD-3", "R-AUD-4", "AUD-POLICY"],
    "Retention and destruction (APP 11.2)": ["R-RET-1", "R-RET-2", "RET-NO-TRAINING"],
    "Individuals' requests (APP 12, APP 13)": ["R-DSR-1", "R-DSR-2", "DSR-CHANNELS"],
    "Breaches (NDB scheme)": ["R-NDB-1"],
    "Access (Essential Eight)": ["R-SEC-1", "R-SEC-2", "R-SEC-3"],
    "Openness (APP 1, APP 5)": ["OPEN-POLICY", "OPEN-ADM", "OPEN-NOTICE", "OPEN-SUMMARY"],
}
NODE = re.compile(r"`(tests/[\w/]+\.py(?:::[\w\[\]\-.,]+)+)`")


@cache
def rows() -> list[tuple[str, str, list[str]]]:
    """(section, requirement id, node ids) for every table row of the page."""
    found, section = [], ""
    for line in PAGE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            assert len(cells) == 3, line
            found.append((section, cells[0].strip("`"), NODE.findall(cells[2])))
    return found


@cache
def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(), filename=path)


def _defined(node_id: str) -> bool:
    """Whether the file defines the test: `file.py::test_x`, `file.py::TestClass::test_x`, `test_x[param]`."""
    path, *names = node_id.split("::")
    if not (ROOT / path).is_file():
        return False
    scope: list[ast.stmt] = _tree(path).body
    for i, name in enumerate(names):
        name = re.sub(r"\[.*\]$", "", name)
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if i == len(names) - 1 else (ast.ClassDef,)
        match = next((n for n in scope if isinstance(n, kinds) and n.name == name), None)
        if match is None:
            return False
        scope = match.body
    return True


def test_the_page_has_rows():
    assert len(rows()) >= 40


def test_every_requirement_has_a_row_in_its_section():
    for section, ids in SECTIONS.items():
        held = {requirement for where, requirement, _ in rows() if where == section}
        assert set(ids) <= held, (section, sorted(set(ids) - held))


def test_every_row_is_a_known_requirement_in_its_own_section():
    known = {requirement: section for section, ids in SECTIONS.items() for requirement in ids}
    for section, requirement, _ in rows():
        assert known.get(requirement) == section, (requirement, section)


def test_every_row_names_a_test():
    assert [requirement for _, requirement, tests in rows() if not tests] == []


def test_every_named_test_exists():
    missing = [node for _, _, tests in rows() for node in tests if not _defined(node)]
    assert missing == []


def test_the_checker_tells_a_missing_test_from_a_present_one():
    assert _defined("tests/test_compliance_map.py::test_every_named_test_exists")
    assert _defined("tests/audit/test_content_guards.py::test_only_the_audit_archive_writes_to_s3[put_object]")
    assert not _defined("tests/test_compliance_map.py::test_that_was_never_written")
    assert not _defined("tests/no_such_file.py::test_x")
    assert not _defined("tests/test_compliance_map.py::NoSuchClass::test_every_named_test_exists")
