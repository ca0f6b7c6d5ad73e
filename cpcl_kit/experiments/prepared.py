"""The prepared run set: supervised, CPS, CPCL and the fully supervised reference, trained once on
the ``benchmark`` preset, for the notebooks.

``make demo`` trains supervised and CPCL of the same recipe live; the set adds CPS and supervision on
every scene ("full"), so notebooks 04-08 can show all four. What the set's runs say over seeds is the
committed benchmark (``benchmarks/results/ssl_gain-benchmark.md``), judged against the preset's noise
table (``cpcl_kit.noise``).

``python -m cpcl_kit prepare`` (``make prepared``) trains this set once into a cache folder outside
the tracked tree, resumably, two runs at a time; notebooks 04–08 use it when it is there
(``find``), and ``benchmarks/ssl_gain.py`` runs the same set on three seeds into the same folder.
The folder is ``$CPCL_KIT_PREPARED`` when set, else ``~/.cache/cpcl-kit/prepared/<preset>``
(``$XDG_CACHE_HOME`` honoured). Runs are ablation-grid cells (``ablate.run_grid``): one folder each,
named ``<variant>__<fraction>__seed<seed>``, under the same-run rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import constants, files
from ..constants import ALL_LABELED, RESULTS_DIR, results_here
from ..engine import runs
from ..errors import KitError

PRESET = "benchmark"
LABELED = "1/16"
# (name shown in tables, grid variant, labeled fraction): the set, in the order tables show it.
MEMBERS = (("supervised", "supervised", LABELED), ("cps", "cps", LABELED), ("cpcl", "cpcl", LABELED),
           ("full", "supervised", ALL_LABELED))
# Stage snapshots of the two-net runs (notebook 08's slider over training).
STAGES = 3
# In the set's folder: the preset and --set overrides it was prepared with (find() compares to them).
SETTINGS = "prepared.json"
# The presets whose notebooks show the prepared set when it exists (smoke stays a plumbing check).
SHOWN_FOR = ("demo", "benchmark")


def default_dir(preset: str = PRESET) -> Path:
    """``$CPCL_KIT_PREPARED``, else ``$XDG_CACHE_HOME/cpcl-kit/prepared/<preset>`` (``~/.cache``)."""
    if os.environ.get("CPCL_KIT_PREPARED"):
        return Path(os.environ["CPCL_KIT_PREPARED"]).expanduser()
    return cache_root() / "prepared" / preset


def cache_root() -> Path:
    """The kit's cache folder (``constants.cache_root``: ``$CPCL_KIT_CACHE``, else
    ``$XDG_CACHE_HOME/cpcl-kit`` or ``~/.cache/cpcl-kit``): the kit's run folders outside the tree."""
    return constants.cache_root()


def grids(seeds) -> list[dict]:
    """The set as ablation grids (one per labeled fraction) over ``seeds``."""
    seeds = [int(s) for s in seeds]
    fractions = dict.fromkeys(f for _, _, f in MEMBERS)
    return [{"variants": [v for _, v, f in MEMBERS if f == frac], "fractions": [frac], "seeds": seeds}
            for frac in fractions]


def run_dirs(folder, seed: int = 0) -> dict[str, Path]:
    """{member name: its run folder} for one seed (finished or not)."""
    return {name: Path(folder) / runs.grid_run_name(variant, frac, seed) for name, variant, frac in MEMBERS}


def prepare(folder=None, preset: str = PRESET, seeds=(0,), jobs: int = 2, overrides: dict | None = None,
            progress: bool = True, log=print):
    """Train (or resume, or just load) the set for ``seeds`` into ``folder`` (``default_dir``);
    returns the ablation table of every finished run there. Every config is checked against the
    folder before anything trains: a folder of other settings is refused, naming the fields."""
    from .ablate import collect, run_grid

    folder = Path(folder) if folder else default_dir(preset)
    recorded = json.loads(json.dumps({"preset": preset, "overrides": dict(overrides or {})}, default=float))
    before = _settings(folder)
    if before is not None and before != recorded:
        # its runs would refuse them too (run_grid); one set, one recipe, so find() compares like with like
        raise KitError(f"{folder} holds a prepared set of other settings ({before}, now {recorded}); use "
                       f"another folder (--out) for these settings, or delete that one")
    folder.mkdir(parents=True, exist_ok=True)
    files.write_json(folder / SETTINGS, recorded)
    run_grid(grids(seeds), folder, preset=preset, overrides=overrides, progress=progress, log=log, jobs=jobs,
             stages=STAGES)
    return collect(folder)


def _settings(folder: Path) -> dict | None:
    """The preset and ``--set`` overrides the set in ``folder`` was prepared with (``SETTINGS``), or None."""
    path = folder / SETTINGS
    return json.loads(path.read_text()) if path.exists() else None


def stale(preset: str = PRESET, seed: int = 0, folder=None) -> list[str]:
    """Settings in which a finished member of the set differs from what ``preset`` (with the set's
    recorded overrides) trains today: a set made by an older kit whose preset has changed since.
    Empty when nothing is finished or everything matches."""
    from .ablate import run_config

    folder = Path(folder or default_dir(preset))
    overrides = (_settings(folder) or {}).get("overrides", {})
    diff: dict[str, None] = {}
    for (_, variant, frac), path in zip(MEMBERS, run_dirs(folder, seed).values()):
        if runs.is_finished(path):
            saved = json.loads((path / runs.CONFIG).read_text())
            if saved.get("preset") == preset:
                diff.update(dict.fromkeys(runs.differing_settings(saved, run_config(variant, frac, seed, preset,
                                                                                     overrides))))
    return list(diff)


def find(preset: str = PRESET, seed: int = 0, folder=None) -> dict[str, Path] | None:
    """The set's run folders for ``seed`` when every member is finished in ``folder``
    (``default_dir``), was trained with ``preset`` and matches what it trains today (``stale``);
    else None (nothing prepared, not all, or made with an older preset)."""
    dirs = run_dirs(folder or default_dir(preset), seed)
    for path in dirs.values():
        if not runs.is_finished(path):
            return None
        saved = json.loads((path / runs.CONFIG).read_text()).get("preset")
        if saved != preset:
            return None
    return None if stale(preset, seed, folder) else dirs


def how_to_make(preset: str = PRESET, seed: int = 0) -> str:
    """The one line a notebook prints when the set is missing (or was made with an older preset)."""
    from ..files import shown_path

    folder = shown_path(default_dir(preset))
    old = stale(preset, seed)
    took = _duration()
    if old:
        return (f"the prepared run set in {folder} was trained with an older {preset} preset (it differs in "
                f"{', '.join(old)}): move that folder away, then `make prepared` (python -m cpcl_kit prepare) "
                f"trains the set of today's preset once ({took}, resumable)")
    return (f"no prepared run set in {folder}: `make prepared` (python -m cpcl_kit prepare) "
            f"trains supervised, CPS, CPCL and full supervision on the {preset} preset once "
            f"({took}, resumable), and notebooks 04-08 then show those runs")


def _duration() -> str:
    """How long ``make prepared`` takes: as timed on a fresh clone (``benchmarks/timing.py``, after
    the install) where that is committed; else from the committed benchmark, whose grid is the set
    over several seeds (the same four runs each), so about its wall time over its seeds."""
    timed = RESULTS_DIR / "timing.json"
    try:
        row = json.loads(timed.read_text()).get("prepared") if timed.is_file() else None
    except (OSError, ValueError):
        row = None
    if row and row.get("returncode") == 0 and row.get("seconds"):
        return (f"about {max(1, round(row['seconds'] / 60))} min with --jobs 2 on a 2-core machine, as "
                f"benchmarks/results/{timed.name} timed it on a fresh clone")
    summary = committed()
    if not summary or not summary.get("grid_wall_seconds"):
        return "its time is not measured here"
    per_seed = summary["grid_wall_seconds"] / max(1, len(summary["supervised"]["seeds"]))
    return f"about {max(1, round(per_seed / 60))} min with --jobs 2, scaled from benchmarks/results/{COMMITTED.name}"


def load(dirs: dict[str, Path], nets: bool = True) -> dict:
    """{member name: runs.RunResult} of a set found by ``find`` (each with its own saved config)."""
    return {name: runs.load_run(path, nets=nets) for name, path in dirs.items()}


def set_table(dirs: dict[str, Path]) -> pd.DataFrame:
    """The members of a set found by ``find``: mIoU, digit-only mIoU (%), net 2 and ensemble (two-net
    runs) and iterations (no seconds: ``make prepared`` trains two runs at a time)."""
    rows = []
    for name, run in load(dirs, nets=False).items():
        m = run.metrics
        br = m.get("branches", {})
        rows.append({"method": name, "mIoU (%)": 100 * m["miou"], "digit-only (%)": 100 * m.get("digit_miou", np.nan),
                     "net 2 (%)": 100 * br.get("2", {}).get("miou", np.nan),
                     "ensemble (%)": 100 * br.get("ensemble", {}).get("miou", np.nan),
                     "iterations": run.config.iterations})
    return pd.DataFrame(rows).set_index("method").round(1)


def two_net_runs(seed: int = 0, grid_folder=None, preset: str | None = None) -> dict:
    """{"cps": RunResult, "cpcl": RunResult} with nets, for the disagreement analysis: the prepared
    set's (when ``preset`` shows it and it is there), else the finished runs with checkpoints of
    the ablation grid in ``grid_folder`` (seed ``seed``, 1/16); may be empty."""
    found = find(PRESET, seed) if preset in SHOWN_FOR else None
    if found:
        return load({k: found[k] for k in ("cps", "cpcl")})
    out = {}
    for name in ("cps", "cpcl"):
        path = Path(grid_folder or ".") / runs.grid_run_name(name, LABELED, seed)
        if runs.is_finished(path) and (path / runs.CHECKPOINT).exists():
            out[name] = runs.load_run(path)
    return out


# ------------------------------------------------------------------------------------------------
# the committed benchmark: what the notebooks show when no set is prepared here

COMMITTED = RESULTS_DIR / f"ssl_gain-{PRESET}.json"


def committed(path=COMMITTED) -> dict | None:
    """The committed ``benchmarks/ssl_gain.py`` summary (seeds 0, 1, 2 of this set), or None."""
    path = Path(path)
    return json.loads(path.read_text()) if results_here(path.parent) and path.exists() else None


def summary_table(summary: dict) -> pd.DataFrame:
    """One row per member of an ssl_gain summary: mIoU per seed, mean ± sd, digit-only mean (all
    in %); two-net methods also net 2's and the ensemble's mean. No seconds: the grid trained two
    runs at a time on two cores, so a run's time says how it shared the machine, not what its method
    costs (``benchmarks/speed.py`` measures that)."""
    rows = []
    for name, _, labeled in MEMBERS:
        s = summary.get(name)
        if not s:
            continue
        row = {"method": name, "labeled": labeled,
               **{f"seed {k}": 100 * v for k, v in zip(s["seeds"], s["miou"])},
               "mean (%)": 100 * s["mean"], "sd (%)": 100 * s["std"], "digit-only (%)": 100 * s["digit_mean"]}
        for key, col in (("miou_net2", "net 2 (%)"), ("miou_ensemble", "ensemble (%)")):
            if s.get(key):
                row[col] = 100 * sum(s[key]) / len(s[key])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method").round(1)


def provenance(summary: dict) -> str:
    """Where a summary comes from, in one line: preset, seeds, commit, command, grid wall time."""
    wall = summary.get("grid_wall_seconds")
    return (f"committed benchmark ({summary['preset']} preset, {summary.get('runs_finished')} runs, seeds "
            f"{', '.join(map(str, summary.get('paired', {}).get('seeds', [])))}), commit {summary['commit']}: "
            f"`{summary.get('command', 'benchmarks/ssl_gain.py')}`"
            + (f", grid wall time {wall / 60:.0f} min on 2 CPU cores" if wall else ""))


def paired_table(summary: dict, noise_table=None) -> pd.DataFrame:
    """The paired differences of a summary (mIoU points per seed, mean, sd) and each one's verdict
    against ``noise_table`` (``noise.compare_seeds``; "not judged" without a table)."""
    from .noise import compare_seeds

    p = summary.get("paired")
    if not p:
        return pd.DataFrame()
    rows = []
    for key in ("cpcl_minus_supervised", "cps_minus_supervised", "cpcl_minus_cps"):
        v = np.array(p[key]["per_seed"], dtype=float)
        sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        a, b = key.split("_minus_")
        rows.append({"difference": key.replace("_minus_", " − "),
                     **{f"seed {s}": x for s, x in zip(p["seeds"], v)}, "mean": float(v.mean()), "sd": sd,
                     "verdict": compare_seeds(a, b, v, noise_table, p["seeds"]).label or "not judged"})
    return pd.DataFrame(rows).set_index("difference").round(2)


def verdicts(summary: dict, noise_table=None) -> list[str]:
    """The sentences of ``noise.compare_seeds`` for CPCL and CPS against supervised, and CPCL against
    CPS, over the summary's paired seeds."""
    from .noise import compare_seeds

    p = summary.get("paired")
    if not p:
        return []
    return [compare_seeds(*key.split("_minus_"), p[key]["per_seed"], noise_table, p["seeds"]).text
            for key in ("cpcl_minus_supervised", "cps_minus_supervised", "cpcl_minus_cps")]
