"""The CLI's tables: one formatter, cells shown as given, columns aligned under their headers."""

from __future__ import annotations

from flows.cli.compare import Curve, compare_table
from flows.cli.tables import table


def test_columns_align_under_their_headers_and_cells_stay_as_given() -> None:
    text = table(["trial", "x1", "solvent"], [("0", "1.5", "dmso"), ("10", None, "water"), ("2", "1e-07", "x")])
    header, rule, *rows = text.splitlines()
    assert header.split() == ["trial", "x1", "solvent"] and set(rule) == {"-", " "}
    assert [r.split() for r in rows] == [["0", "1.5", "dmso"], ["10", "-", "water"], ["2", "1e-07", "x"]]
    starts = {line.index(word) for line, word in zip(rows, ["dmso", "water", "x"], strict=True)}
    assert starts == {header.index("solvent")}


def test_the_compare_table_says_what_each_campaign_reached() -> None:
    curves = [Curve("recorded", "y", True, [1, 2, 3], [0.0, 4.0, 9.5], [3.0, 1.25, 1.25], trial_ids=["0", "7", "2"],
                    by_model="1.4 ± 0.2 (trial 2)"),
              Curve("nothing-yet", "y", True, [], [], [])]
    header, _, first, second = compare_table(curves).splitlines()
    assert header.split()[:2] == ["campaign", "metric"]
    assert header.split()[-6:] == ["by", "the", "model", "best", "by", "engines"]
    # "best at trial" is the trial's id; the model's best beside it; no engines recorded: "best by"
    # and "engines" say so with "-".
    assert first.split() == ["recorded", "y", "(min)", "3", "1.25", "7", "4.0", "9.5", "1.4", "±", "0.2", "(trial", "2)",
                             "-", "-"]
    assert second.split() == ["nothing-yet", "y", "0", "-", "-", "-", "-", "-", "-", "-"]


def test_an_indented_table_sits_under_its_heading() -> None:
    assert all(line.startswith("    ") for line in table(["a"], [("1",)], indent="    ").splitlines())


def test_the_compare_page_has_the_same_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from flows.cli.compare import write_compare

    curves = [Curve("recorded", "y", True, [1, 2], [0.0, 4.0], [3.0, 1.25])]
    write_compare(curves, tmp_path / "cmp")
    page = (tmp_path / "cmp.html").read_text()
    assert "<th>campaign</th>" in page and "<td>recorded</td>" in page and "<td>1.25</td>" in page
