"""The README's lifecycle table is generated from the code; this keeps the two from drifting."""

from __future__ import annotations

from pathlib import Path

from mailbridge.lifecycle import markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lifecycle_table_matches_the_code() -> None:
    text = README.read_text()
    start = text.index("<!-- lifecycle-table -->") + len("<!-- lifecycle-table -->")
    end = text.index("<!-- /lifecycle-table -->")
    assert text[start:end].strip() == markdown_table()


def test_readme_names_the_test_command_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text()
    assert ci.rstrip().splitlines()[-1] == "python -m pytest -q"
