"""The published figures: every row sourced, the CPCL rows equal the method notes' §8 tables."""

import re
from pathlib import Path

import pytest

from cpcl_kit import published

NOTES = Path(__file__).resolve().parents[2] / "shared" / "cpcl_method.md"


def test_every_row_has_four_partitions_and_a_source():
    t = published.table()
    assert len(t) == 4 * len(published.ROWS) and t["source"].str.len().min() > 20
    assert set(t["labeled"]) == set(published.PARTITIONS)


@pytest.mark.skipif(not NOTES.exists(), reason="the method notes (../shared) are not in this checkout")
def test_cpcl_rows_match_the_method_notes():
    text = NOTES.read_text()
    sections = {"voc": text.split("### 8.1")[1].split("### 8.2")[0], "cityscapes": text.split("### 8.2")[1].split("### 8.3")[0]}
    checked = 0
    for dataset, method, backbone, values, _, against in published.ROWS:
        if against != published.ORIGINAL:
            continue
        name = {"cpcl": r"\*\*CPCL\*\*", "supervised": "Supervised"}[method]
        row = re.search(rf"\| {name} \| {backbone} \|(.*)\|", sections[dataset])
        assert row, (dataset, method, backbone)
        nums = tuple(float(x.strip().strip("*")) for x in row.group(1).split("|"))
        assert nums == values, (dataset, method, backbone)
        checked += 1
    assert checked == 5


def test_cpcl_minus_cps_by_hand():
    d = published.cpcl_minus_cps()
    assert d.loc[("voc", "R-50"), "1/16"] == pytest.approx(71.66 - 71.98)
    assert d.loc[("cityscapes", "R-50"), "1/2"] == pytest.approx(78.17 - 78.77)
    assert ("voc", "R-101") in d.index and len(d) == 3
    w = published.wide()
    assert w.loc[("voc", "R-50", "cps"), "checked against"] == published.TRANSCRIPTION
    assert w.loc[("voc", "R-50", "cpcl"), "1/16"] == 71.66


def test_cps_rows_are_the_transcribed_tables():
    """The CPS figures as the n-CPS authors' copy of CPS Tables 1-2 gives them (w/ CutMix column)."""
    cps = {(d, b): v for d, m, b, v, _, _ in published.ROWS if m == "cps"}
    assert cps == {("voc", "R-50"): (71.98, 73.67, 74.90, 76.15), ("voc", "R-101"): (74.48, 76.44, 77.68, 78.64),
                   ("cityscapes", "R-50"): (74.47, 76.61, 77.83, 78.77)}
