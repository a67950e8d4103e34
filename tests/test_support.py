"""The README's support matrix is the one the mapping tables render."""

import pathlib

from converter import mapping, support

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_matrix_is_the_generated_one():
    text = README.read_text()
    start, end = support.MARKERS
    assert start in text and end in text, f"README.md lacks the support matrix markers {support.MARKERS}"
    written = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert written == support.render(), "README.md's support matrix is stale: paste converter.support.render()"


def test_every_table_has_a_row():
    rows = support.render().splitlines()[2:]
    assert len(rows) == len(mapping.builtin_tables())
    assert all(f"`{name}`" in row for name, row in zip(mapping.builtin_tables(), rows))
