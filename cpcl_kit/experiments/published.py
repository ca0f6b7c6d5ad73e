"""Published mIoU figures (%) of CPCL and CPS, as data, with where each row comes from.

Notebook 07 sets the kit's own ordering of the methods beside these. Every row names its source;
``checked`` says what the figures were checked against: ``"original"`` (the source's own tables)
or ``"transcription"`` (a copy of the source's tables that others published, the original having
no readable copy here).

* CPCL: Fan et al., IEEE TIP 2023 (arXiv 2211.16701), the result tables that the official
  repository (github.com/leofansq/CPCL) shows as images: ``img/pascalvoc.png`` (VOC 2012 val,
  blended 10,582-image train set, DeepLabv3+) and ``img/cityscapes.png`` (Cityscapes val). Copied
  from those images.
* CPS: Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision", CVPR 2021
  (arXiv 2106.01226), Tables 1 (VOC) and 2 (Cityscapes), the "CPS w/ CutMix" column. The CPS
  repository's README (charlesCXK/TorchSemiSeg) has no results table and the stored copies of the
  paper stop before its tables, so the figures were checked against the CSV copy of both tables
  that the n-CPS authors (Filipiak et al., arXiv 2112.07528) keep in their repository, "Data from
  Table 1 and 2 in the paper": github.com/AI-Clearing/n-cps, notebooks/00_generate_baseline.ipynb
  at commit ad863cf (removed from main later). All twelve figures match it; two are also quoted
  independently: VOC R-50 1/8, 73.67 (charlesCXK/TorchSemiSeg issue 14) and Cityscapes R-50 1/2,
  78.77 (PaddleSeg contrib/CrossPseudoSupervision/README_CN.md).
"""

from __future__ import annotations

import pandas as pd

PARTITIONS = ("1/16", "1/8", "1/4", "1/2")

_CPCL_SOURCE = "CPCL paper (IEEE TIP 2023), tables shown in leofansq/CPCL README (img/pascalvoc.png, img/cityscapes.png)"
_CPS_SOURCE = ("CPS paper (CVPR 2021, arXiv 2106.01226) Tables 1-2, CPS w/ CutMix, as transcribed by the "
               "n-CPS authors: github.com/AI-Clearing/n-cps notebooks/00_generate_baseline.ipynb @ ad863cf")
ORIGINAL, TRANSCRIPTION = "original", "transcription"

# (data set, method, backbone, figures per partition, source, what they were checked against)
ROWS = (
    ("voc", "supervised", "R-50", (62.00, 67.16, 71.66, 74.05), _CPCL_SOURCE, ORIGINAL),
    ("voc", "cpcl", "R-50", (71.66, 73.74, 74.58, 75.30), _CPCL_SOURCE, ORIGINAL),
    ("voc", "cpcl", "R-101", (73.44, 76.40, 77.16, 77.67), _CPCL_SOURCE, ORIGINAL),
    ("voc", "cps", "R-50", (71.98, 73.67, 74.90, 76.15), _CPS_SOURCE, TRANSCRIPTION),
    ("voc", "cps", "R-101", (74.48, 76.44, 77.68, 78.64), _CPS_SOURCE, TRANSCRIPTION),
    ("cityscapes", "supervised", "R-50", (61.67, 68.63, 73.22, 75.36), _CPCL_SOURCE, ORIGINAL),
    ("cityscapes", "cpcl", "R-50", (69.92, 74.60, 76.98, 78.17), _CPCL_SOURCE, ORIGINAL),
    ("cityscapes", "cps", "R-50", (74.47, 76.61, 77.83, 78.77), _CPS_SOURCE, TRANSCRIPTION),
)


def table() -> pd.DataFrame:
    """Long table: dataset, method, backbone, labeled, miou, source, checked."""
    return pd.DataFrame([{"dataset": d, "method": m, "backbone": b, "labeled": p, "miou": v, "source": s,
                          "checked": c}
                         for d, m, b, vals, s, c in ROWS for p, v in zip(PARTITIONS, vals)])


def wide() -> pd.DataFrame:
    """One row per (dataset, backbone, method), one column per partition, and ``checked against``
    (the source's own tables, or a transcription of them)."""
    t = table()
    w = t.pivot_table(index=["dataset", "backbone", "method"], columns="labeled", values="miou", sort=False)
    checked = t.drop_duplicates(["dataset", "backbone", "method"]).set_index(["dataset", "backbone", "method"])
    return w[list(PARTITIONS)].assign(**{"checked against": checked["checked"]})


def cpcl_minus_cps() -> pd.DataFrame:
    """CPCL − CPS (points) per data set, backbone and partition, where both were published."""
    t = table().pivot_table(index=["dataset", "backbone", "labeled"], columns="method", values="miou", sort=False)
    t = t.dropna(subset=["cpcl", "cps"])
    return (t["cpcl"] - t["cps"]).round(2).unstack("labeled")[list(PARTITIONS)]


NAMES = {"voc": "VOC", "cityscapes": "Cityscapes"}


def cpcl_minus_cps_summary() -> str:
    """``cpcl_minus_cps`` in a sentence: in how many of the settings both papers report CPCL − CPS
    is negative, its range, and the settings where it is not."""
    v = cpcl_minus_cps().stack()
    negative, n = int((v < 0).sum()), len(v)
    rest = v[v >= 0]
    where = ", ".join(f"{NAMES.get(d, d)} {b} {p} ({x:+.2f})" for (d, b, p), x in rest.items())
    lead = ("CPS (with CutMix) ahead in most of them" if negative > n - negative else
            "CPCL ahead in most of them" if negative < n - negative else "each ahead in half of them")
    return (f"In the papers' own settings CPCL − CPS is negative in {negative} of the {n} where both report a "
            f"figure ({', '.join(sorted({f'{NAMES.get(d, d)} {b}' for d, b, _ in v.index}))}; "
            f"{', '.join(PARTITIONS)} labeled), from {v.min():+.2f} to {v.max():+.2f} points"
            + (f"; not negative only for {where}" if len(rest) else "")
            + f": the published figures put {lead}. Each paper trained with its own code and schedule, so "
              f"these are differences of published means, not paired runs.")
