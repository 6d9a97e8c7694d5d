"""The refusal registry (`raas_sglang/refusals.py`) and its cases (tests/bad_inputs.py) are in step: every row has
a case, every case names a row of a kind it can exercise and fits that row's message, and docs/bad-input.md is
their rendering."""

import re
from pathlib import Path

import pytest

from bad_inputs import CASES, Built, Launch, ModelLaunch, Request, Resolved, render
from raas_sglang import refusals


def test_doc_matches_registry_and_cases():
    doc = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
    assert doc.read_text() == render(), "regenerate: python tests/bad_inputs.py > docs/bad-input.md"


def test_rows_are_unique_and_in_their_table():
    tables = {"flag": refusals.FLAG, "startup": refusals.STARTUP, "loaded": refusals.LOADED,
              "request": refusals.REQUEST}
    assert len(refusals.ROWS) == sum(len(rows) for rows in tables.values())
    for kind, rows in tables.items():
        for row in rows:
            assert row.kind == kind and re.fullmatch(r"[a-z]+(\.[a-z0-9-]+)+", row.id), row.id
            assert (row.refuses is None) == (kind == "flag" and not row.model), row.id


def test_every_row_has_a_case():
    covered = {case.row for case in CASES}
    missing = [row for row in refusals.ROWS if row not in covered]
    assert not missing, f"rows without a case in tests/bad_inputs.py: {missing}"


def test_case_names_are_unique_per_kind():
    for kind in (Launch, Request, Resolved, ModelLaunch, Built):
        names = [c.name for c in CASES if isinstance(c, kind)]
        assert len(names) == len(set(names)), kind.__name__


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c).__name__}-{c.name}")
def test_case_names_a_row_it_can_exercise(case):
    assert case.row in refusals.ROWS, f"{case.name}: unknown row {case.row!r}"
    row = refusals.ROWS[case.row]
    allowed = {
        Launch: row.kind in ("flag", "startup"),
        Resolved: row.kind == "startup" or (row.kind == "flag" and row.refuses is not None),
        Request: row.kind == "request",
        ModelLaunch: row.kind in ("startup", "loaded"),
        Built: row.kind == "loaded",
    }
    assert allowed[type(case)], f"{case.name}: a {type(case).__name__} case cannot exercise {row.id}"


def _fits(parts: list[str], text: str, partial: bool) -> bool:
    """Whether `text` is (`partial`: the start of) the message whose template is `parts`, literal text and
    `{field}`s in turn; a field stands for any non-empty text without a `;`."""
    if not parts:
        return not text
    if not text:
        return partial
    part, rest = parts[0], parts[1:]
    if not (part.startswith("{") and part.endswith("}")):
        if partial and len(text) < len(part):
            return part.startswith(text)
        return text.startswith(part) and _fits(rest, text[len(part):], partial)
    for k in range(1, len(text) + 1):
        if text[k - 1] == ";":
            return False
        if _fits(rest, text[k:], partial):
            return True
    return False


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c).__name__}-{c.name}")
def test_case_message_fits_its_row(case):
    """The case's message (a prefix of what is printed) could be the start of its row's message; a startup row's
    message follows `--kv-policy P does not support `, joined to the other matching rows' by `; nor `."""
    row = refusals.ROWS[case.row]
    parts = [p for p in re.split(r"(\{[^{}]*\})", refusals.show(row.message)) if p]
    if row.kind not in ("startup", "loaded"):
        assert _fits(parts, case.message, partial=True), (case.message, row.message)
        return
    head = re.match(r"--kv-policy \S+ does not support ", case.message)
    assert head, case.message
    *complete, last = case.message[head.end():].split("; nor ")
    assert any(_fits(parts, c, partial=False) for c in complete) or _fits(parts, last, partial=True), case.message


def test_every_allowed_option_names_a_test_that_exists():
    root = Path(__file__).resolve().parent.parent
    for allowed in refusals.ALLOWED:
        path, func = allowed.test.split("::")
        assert f"def {func}(" in (root / path).read_text(), allowed
