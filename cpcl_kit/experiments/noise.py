"""How far a result moves under what a user cannot control, and verdicts that are computed from it.

A CPU run repeats to the last digit for one seed, one kind of CPU and one thread count, and only
there. Another seed draws other labeled scenes, head weights and batches; another thread count or
another CPU adds floats in another order, and over a few thousand steps of training those rounding
differences grow into a different network. A user controls none of the second kind, and a result
that depends on it is noise. ``benchmarks/noise.py`` measures it for a preset: supervised, CPS and
CPCL trained on several seeds, each with one and with two torch threads (two float orders), written
to ``benchmarks/results/noise-<preset>.json`` with the commit, command, seconds and CPU.

From that table (``NoiseTable``):

* the **float-order move** of a comparison A − B: on each seed, how much A − B changes between the
  two float orders; the *floor* is the largest of these, the most that the float order alone moved
  that comparison on this preset;
* the **draws** of A − B: its value in every (seed, float order), the range a user should expect.

A verdict (``compare_runs``, ``compare_seeds``) is given two results and a table and says what the
numbers say: ahead, behind, or within the noise, by how much, and what a run like it can decide.
Over several seeds it also gives the paired 95 % interval of the mean difference (Student's t on the
per-seed differences, n − 1 degrees of freedom): how far the seeds leave the mean open. Where that
interval straddles 0 and is wider than ±1 point, or the mean is within the noise, the sentence says
"cannot tell at N seeds" with the interval.
Notebooks, ``benchmarks/ssl_gain.py`` and the ablation tables print these sentences; no text states
a measured number by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import RESULTS_DIR, results_here
from ..errors import KitError

AHEAD, BEHIND, WITHIN = "ahead", "behind", "within the noise"
# The methods a noise table measures, and their names in sentences.
METHODS = ("supervised", "cps", "cpcl")
LABELS = {"supervised": "supervised", "cps": "CPS", "cpcl": "CPCL", "full": "full supervision"}


def order_label(threads: int, cpu: str | None = None) -> str:
    """How a table names a float order: the thread count, and the CPU where it is another machine's."""
    label = f"{threads} thread" + ("s" if threads != 1 else "")
    return f"{cpu}, {label}" if cpu else label


def table_path(preset: str, folder=RESULTS_DIR) -> Path:
    return Path(folder) / f"noise-{preset}.json"


@dataclass(frozen=True)
class NoiseTable:
    """A measured noise table. ``runs``: one row per run, columns method, seed, threads, miou (0..1),
    and optionally ``order`` (the float order: a thread count, on another machine its CPU too;
    default "<threads> thread(s)"), digit_miou, seconds. ``meta``: preset, commit, command, seconds,
    cpu, torch."""

    runs: pd.DataFrame
    meta: dict

    def __post_init__(self):
        threads = self.runs["threads"].map(order_label)
        given = self.runs["order"] if "order" in self.runs.columns else pd.Series(None, index=self.runs.index)
        object.__setattr__(self, "runs", self.runs.assign(order=given.where(given.notna(), threads)))

    @property
    def preset(self) -> str:
        return self.meta["preset"]

    def miou(self, method: str) -> pd.DataFrame:
        """mIoU in % of ``method``: rows seeds, columns float orders."""
        r = self.runs[self.runs["method"] == method]
        return (100 * r.pivot_table(index="seed", columns="order", values="miou")).sort_index()

    def differences(self, a: str, b: str) -> pd.DataFrame:
        """``a`` − ``b`` in mIoU points, paired by seed and float order: rows seeds, columns orders."""
        return (self.miou(a) - self.miou(b)).dropna(how="all")

    def float_moves(self, a: str, b: str | None = None) -> pd.Series:
        """Per seed measured in two float orders or more: how far ``a`` (or ``a`` − ``b``) moved
        across them, in points. A seed measured in one order says nothing of the float order."""
        t = self.miou(a) if b is None else self.differences(a, b)
        t = t[t.notna().sum(axis=1) >= 2]
        return t.max(axis=1) - t.min(axis=1)

    def measures(self, a: str, b: str | None = None) -> bool:
        """Whether the table measured ``a`` (and ``b``) on some seed in two float orders."""
        have = set(self.runs["method"])
        return a in have and (b is None or b in have) and len(self.float_moves(a, b)) > 0

    def floor(self, a: str, b: str | None = None) -> float:
        """The most the float order alone moved ``a`` − ``b`` (or ``a``) on one seed, in points.
        For a pair the table does not measure (``measures``), a stand-in: the largest floor of the
        pairs it does measure. KitError when it measures no pair at all."""
        if self.measures(a, b):
            return float(self.float_moves(a, b).max())
        pairs = [(x, y) for i, x in enumerate(METHODS) for y in METHODS[i + 1:] if self.measures(x, y)]
        if not pairs:
            raise KitError(f"noise table of the {self.preset} preset: no pair of methods measured in two "
                           f"float orders on one seed; it cannot give a noise floor")
        return max(float(self.float_moves(x, y).max()) for x, y in pairs)

    def draws(self, a: str, b: str) -> np.ndarray:
        """Every (seed, float order) value of ``a`` − ``b``, in points."""
        d = self.differences(a, b).to_numpy().ravel()
        return d[~np.isnan(d)]

    def provenance(self) -> str:
        m = self.meta
        orders = list(dict.fromkeys(self.runs["order"]))
        return (f"noise table of the {m['preset']} preset: {len(self.runs)} runs "
                f"({', '.join(sorted(set(self.runs['method'])))} on seeds "
                f"{', '.join(map(str, sorted(set(self.runs['seed']))))}, in {len(orders)} float orders: "
                f"{'; '.join(orders)}), commit {m['commit']}, {m['cpu']}: `{m['command']}`")

    def summary(self) -> pd.DataFrame:
        """Per method: mean, sd, min and max mIoU (%) over every draw, and the largest float-order move."""
        rows = []
        for method in [m for m in (*METHODS, "full") if m in set(self.runs["method"])]:
            v = self.miou(method).to_numpy().ravel()
            v = v[~np.isnan(v)]
            rows.append({"method": method, "runs": len(v), "mean (%)": v.mean(), "sd (%)": v.std(ddof=1),
                         "min (%)": v.min(), "max (%)": v.max(),
                         "largest float-order move (points)": self.float_moves(method).max()})
        return pd.DataFrame(rows).set_index("method").round(2)

    def pair_table(self, pairs=(("cpcl", "supervised"), ("cps", "supervised"), ("cpcl", "cps"))) -> pd.DataFrame:
        """Per pair: the difference in every (seed, threads) draw, its range and its float-order floor."""
        rows, have = [], set(self.runs["method"])
        for a, b in [(a, b) for a, b in pairs if {a, b} <= have]:
            d = self.differences(a, b)
            row = {"difference": f"{LABELS[a]} − {LABELS[b]}"}
            row.update({f"seed {s}, {o}": d.loc[s, o] for s in d.index for o in d.columns})
            row.update({"min": np.nanmin(d.to_numpy()), "max": np.nanmax(d.to_numpy()),
                        "float-order floor": self.floor(a, b)})
            rows.append(row)
        return pd.DataFrame(rows).set_index("difference").round(2)


def read_table(path) -> NoiseTable:
    data = json.loads(Path(path).read_text())
    return NoiseTable(pd.DataFrame(data["runs"]), {k: v for k, v in data.items() if k != "runs"})


def for_preset(preset: str, folder=RESULTS_DIR) -> NoiseTable | None:
    """The committed noise table that holds for ``preset``: its own, or one of a preset that trains
    the same recipe (every setting but the bookkeeping ones equal); None when none was measured."""
    from ..config import PRESETS, make_config
    from ..engine.runs import differing_settings

    if preset not in PRESETS or not results_here(folder):
        return None
    cfg = make_config(preset)
    own = table_path(preset, folder)
    for path in [own] + [p for p in sorted(Path(folder).glob("noise-*.json")) if p != own]:
        if not path.exists():
            continue
        table = read_table(path)
        # a table holds for the recipe it was measured with: not for other --set values, nor for a
        # preset that has changed since
        measured = table.meta.get("config")
        if measured and not table.meta.get("sets") and not differing_settings(measured, cfg):
            return table
    return None


def for_config(cfg, folder=RESULTS_DIR) -> NoiseTable | None:
    """The noise table that holds for a run of ``cfg``: its preset's (``for_preset``) when it trains
    on the data the tables were measured on, the embedded digit scenes; None for any other data set
    (a floor measured on digits says nothing of how much the float order moves a run on yours)."""
    from ..config import PRESETS, preset_value

    if cfg.preset not in PRESETS or cfg.dataset != preset_value(cfg.preset, "dataset") or cfg.data_root:
        return None
    return for_preset(cfg.preset, folder)


# ------------------------------------------------------------------------------------------------
# verdicts


@dataclass(frozen=True)
class Verdict:
    """A comparison of ``a`` with ``b`` in mIoU points: ``difference`` (a − b, or the mean over seeds),
    ``floor`` (None without a noise table), ``label`` (AHEAD, BEHIND, WITHIN, or None: not judged),
    ``text``, the sentence to print, and ``interval``: (low, high) of the paired 95 % interval of the
    mean over seeds (None for one run or one seed)."""

    a: str
    b: str
    difference: float
    floor: float | None
    label: str | None
    text: str
    interval: tuple | None = None

    def __str__(self) -> str:
        return self.text


def _label(diff: float, floor: float) -> str:
    return AHEAD if diff > floor else BEHIND if diff < -floor else WITHIN


def _pts(x: float) -> str:
    shown = round(float(x), 1)
    return f"{shown if shown != 0 else 0.0:+.1f}"  # never "-0.0": a tiny negative shows as +0.0


def compare_runs(a: str, miou_a: float, b: str, miou_b: float, table: NoiseTable | None) -> Verdict:
    """The verdict on one run of method ``a`` against one of ``b`` on the same seed (mIoU in 0..1):
    ahead or behind when the difference exceeds the float-order floor of that pair, else within the
    noise; followed by what the table says a run of this preset decides."""
    diff = 100 * (miou_a - miou_b)
    head = f"{LABELS.get(a, a)} {100 * miou_a:.1f} % against {LABELS.get(b, b)} {100 * miou_b:.1f} %"
    if table is None:
        return Verdict(a, b, diff, None, None, f"{head} ({_pts(diff)} points). No noise table was measured "
                       f"for this preset on this data, so this difference is shown, not judged: the float order alone "
                       f"(another CPU, another thread count) moves a run, by an amount not measured here.")
    floor, measured = table.floor(a, b), table.measures(a, b)
    label = _label(diff, floor)
    bound = (f"the float order alone moves this difference by up to {floor:.1f} points on this preset"
             if measured else f"the float order alone moved the pairs this preset's noise table measured by "
                              f"up to {floor:.1f} points; this pair was not measured")
    if label == WITHIN:
        text = (f"{head}: {LABELS.get(a, a)} is within the noise ({_pts(diff)} points; {bound}), so this one "
                f"run cannot decide which is ahead.")
    else:
        text = f"{head}: on this seed {LABELS.get(a, a)} is {label} by {abs(diff):.1f} points, beyond the noise ({bound})."
    if measured:
        d = table.differences(a, b)
        draws = table.draws(a, b)
        text += (f" Over {len(draws)} runs of this preset ({len(d)} seeds, {d.notna().sum(axis=0).gt(0).sum()} "
                 f"float orders) the difference ranged from {_pts(draws.min())} to {_pts(draws.max())} points, "
                 f"{LABELS.get(a, a)} ahead in {int((draws > 0).sum())} of them.")
    return Verdict(a, b, diff, floor, label, text)


# A paired interval narrower than this (half-width, points) decides a comparison whichever way it
# falls; a wider one that holds 0 leaves it open.
DECISIVE = 1.0
CONFIDENCE = 0.95


def _half_width(sd: float, n: int, confidence: float) -> float:
    """Half the ``confidence`` Student-t interval of a mean of ``n`` values of spread ``sd``."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)


def paired_interval(diffs, confidence: float = CONFIDENCE) -> tuple | None:
    """(low, high) of the ``confidence`` Student-t interval of the mean of the paired differences
    ``diffs`` (n − 1 degrees of freedom); None for fewer than two."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return None
    half = _half_width(float(d.std(ddof=1)), len(d), confidence)
    return float(d.mean()) - half, float(d.mean()) + half


def seeds_for(diffs, half_width: float = DECISIVE, confidence: float = CONFIDENCE, most: int = 1000) -> int | None:
    """How many seeds a paired interval as wide as ±``half_width`` would need if the per-seed
    differences kept the spread of ``diffs``; None for fewer than two differences, or over ``most``."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return None
    sd = float(d.std(ddof=1))
    for n in range(2, most + 1):
        if _half_width(sd, n, confidence) <= half_width:
            return n
    return None


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _interval_words(interval: tuple | None, n: int) -> str:
    if interval is None:
        return "one seed gives no interval"
    return (f"paired {100 * CONFIDENCE:.0f} % interval {_pts(interval[0])} to {_pts(interval[1])} points "
            f"(Student's t, {n - 1} degree{'s' if n != 2 else ''} of freedom)")


def open_interval(interval: tuple | None) -> bool:
    """Whether a paired interval leaves the sign open: it holds 0 and is wider than ±``DECISIVE``."""
    return interval is not None and interval[0] <= 0 <= interval[1] and (interval[1] - interval[0]) / 2 > DECISIVE


def compare_seeds(a: str, b: str, diffs, table: NoiseTable | None, seeds=None) -> Verdict:
    """The verdict on ``a`` − ``b`` over several seeds (paired differences ``diffs`` in points):
    ahead (behind) when every seed agrees in sign, the mean exceeds the float-order floor and the
    paired 95 % interval does not leave the sign open (``open_interval``), else within the noise.
    The sentence states the interval; an undecided one says "cannot tell at N seeds"."""
    d = np.asarray(diffs, dtype=float)
    seeds = list(seeds) if seeds is not None else list(range(len(d)))
    if len(d) == 0 or len(seeds) != len(d):
        raise KitError(f"compare_seeds: expected one difference per seed, got {len(d)} for seeds {seeds}")
    interval = paired_interval(d)
    per_seed = ", ".join(f"{_pts(x)} (seed {s})" for s, x in zip(seeds, d))
    head = (f"{LABELS.get(a, a)} − {LABELS.get(b, b)}: {_pts(d.mean())} points on the mean of {_seeds(len(d))} "
            f"({per_seed}), {_interval_words(interval, len(d))}")
    cannot = f"cannot tell at {_seeds(len(d))}"
    narrow = (f"; the interval rules out a difference of more than {DECISIVE:.0f} point either way"
              if interval is not None and interval[0] >= -DECISIVE and interval[1] <= DECISIVE else "")
    if table is None:
        words = f"{cannot}; " if open_interval(interval) else ""
        return Verdict(a, b, float(d.mean()), None, None,
                       f"{head}: {words}no noise table holds for these runs (their preset, recipe and data), so it "
                       f"is shown, not judged.", interval)
    floor = table.floor(a, b)
    same_sign = bool((d > 0).all() or (d < 0).all())
    by_floor = _label(float(d.mean()), floor) if same_sign else WITHIN
    label = WITHIN if open_interval(interval) else by_floor
    measured = "" if table.measures(a, b) else " (a stand-in: the table did not measure this pair)"
    beyond = f"the {floor:.1f} points{measured} that the float order alone moves one run's difference"
    if label == WITHIN:
        why = ("not every seed has the same sign" if not same_sign else
               f"the mean is inside {beyond}" if by_floor == WITHIN else
               f"{LABELS.get(a, a)} is {by_floor} on every seed and the mean exceeds {beyond}, but the seeds "
               f"spread so widely that the interval holds 0")
        text = f"{head}: {cannot} (within the noise: {why}){narrow}."
    else:
        text = f"{head}: {LABELS.get(a, a)} is {label} on every seed, and the mean exceeds {beyond}."
    return Verdict(a, b, float(d.mean()), floor, label, text, interval)
