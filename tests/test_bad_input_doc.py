"""docs/bad-input.md is the rendering of the bad-input table the tests run (tests/bad_inputs.py)."""

from pathlib import Path

from bad_inputs import FLAGS, REQUESTS, render


def test_doc_matches_table():
    doc = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
    assert doc.read_text() == render(), "regenerate: python tests/bad_inputs.py > docs/bad-input.md"
    assert len(FLAGS) + len(REQUESTS) >= 25
