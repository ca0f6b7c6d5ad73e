"""Ablation grids: variants x labeled fractions x seeds, one run folder each, resumable, one table.

A grid runs its runs one after another (or ``jobs`` at a time in worker processes), each in
``out_dir/<variant>__<fraction, / as ->__seed<seed>`` (e.g. ``inter_only__1-16__seed2``). A run whose
``metrics.json`` exists is finished and skipped (the training loop writes it atomically, last); a
folder with a checkpoint but no metrics is resumed exactly; anything else is trained from the start.
So an interrupted overnight grid continues where it stopped when started again with the same
command. A folder holding a run with other settings (another ``--set``, preset or schedule) stops
the grid before anything trains, naming the fields (``runs.check_same_run``). Two grids started on
one folder share the work: each run is trained by whichever process locks it first, the other
waits for the runs it found busy at the end. ``out_dir/ablation.csv`` is rewritten (atomically)
after every run with one row per finished run in the folder.
"""

from __future__ import annotations

import dataclasses

import itertools
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files, registry
from ..config import make_config
from ..constants import ALL_LABELED, RESULTS_DIR, results_here
from ..data.splits import parse_labeled
from ..engine import runs
from ..engine.runs import grid_run_name as run_name
from ..engine.train import run_or_load
from ..errors import KitError

# Each variant: the config fields it sets. The four CPCL ablations are the paper's (docs/method.md §3, §4).
VARIANTS: dict[str, dict] = {
    "cpcl": {},
    "inter_only": {"targets": ("inter", "inter")},
    "union_only": {"targets": ("union", "union")},
    "no_reweight": {"reweight": False},
    "union_by_confidence": {"union_rule": "confidence"},
    # The official code's first release, and its two changes one at a time: whether the weighting of
    # the released code is what separates CPCL from CPS.
    "first_release": {"weight_scope": "batch", "inter_norm": "labeled"},
    "batch_weight": {"weight_scope": "batch"},
    "inter_over_labeled": {"inter_norm": "labeled"},
    # CPCL's unsupervised loss is about 0.78 of CPS's (agreement 0.9 x mean weight 0.87 at the end of
    # the committed benchmark runs): the same effective strength from either side.
    "cpcl_lambda_1.28": {"unsup_weight": 1.28},
    "cps_lambda_0.78": {"method": "cps", "unsup_weight": 0.78},
    # How good must the teachers be? The official teachers normalise with the BatchNorm statistics of
    # their own 4-image batch (train mode); these use the running statistics (eval mode).
    "teacher_eval": {"teacher_bn": "eval"},
    # The labeled masks leave a 1-px void band round each outline (void_band=1), the pseudo labels none:
    # whether the two-net nets lose on the digits' outline rather than on their identity.
    "pseudo_void_band": {"pseudo_void_band": 1},
    # CutMix cuts a 40-56 px digit into box fragments whose identity the student must name from the
    # fragment alone (a VOC object is named by its texture): the two-net methods without mixing.
    "no_cutmix": {"cutmix_boxes": 0},
    "cps_no_cutmix": {"method": "cps", "cutmix_boxes": 0},
    # A perturbation that keeps the digit whole: the student sees the scene rotated, scaled, shifted.
    "student_affine": {"student_aug": "affine"},
    "affine_no_cutmix": {"student_aug": "affine", "cutmix_boxes": 0},
    "cps_affine_no_cutmix": {"method": "cps", "student_aug": "affine", "cutmix_boxes": 0},
    "cps": {"method": "cps"},
    "supervised": {"method": "supervised"},
}
# The paper's four ablations of CPCL: each removes or swaps one ingredient.
PAPER_ABLATIONS = ("inter_only", "union_only", "no_reweight", "union_by_confidence")
# The method, its four ablations and the two baselines; the other variants ask why CPS leads.
PAPER_VARIANTS = ("cpcl", *PAPER_ABLATIONS, "cps", "supervised")
# The older committed grids (benchmarks/ablation.py --recipe cutmix): the baselines, the why-CPS-leads
# variants first, then the paper's ablations.
WHY_CPS_VARIANTS = ("supervised", "cps", "cpcl", "first_release", "batch_weight", "inter_over_labeled",
                    "cpcl_lambda_1.28", "cps_lambda_0.78", "teacher_eval")
COMMITTED_VARIANTS = WHY_CPS_VARIANTS + PAPER_ABLATIONS
# The two variants that give CPCL and CPS the same unsupervised strength from either side: whether
# the strength alone explains CPCL against CPS.
STRENGTH_VARIANTS = ("cps_lambda_0.78", "cpcl_lambda_1.28")
# The grid notebook 07 reads: the benchmark preset as it is, from the shipped backbone, seeds 0-2
# (benchmarks/ablation.py's defaults): the method, the baselines and the paper's ablations, which
# fit one long session on 2 cores; STRENGTH_VARIANTS extend it.
PRESET_GRID = "ablation-benchmark-preset"
PRESET_GRID_VARIANTS = ("cpcl", "cps", "supervised", *PAPER_ABLATIONS)
# The live demo grid (notebook 07 under make demo): the method, its main ablation and the two baselines,
# a workflow demonstration that fits make demo's time (the paper's seven took 6 minutes there).
DEMO_VARIANTS = ("cpcl", "inter_only", "cps", "supervised")
GRID_KEYS = ("variants", "fractions", "seeds")
TABLE = "ablation.csv"
COLUMNS = ["variant", "labeled", "seed", "miou", "digit_miou", "pixel_acc", "miou_net2", "miou_ensemble",
           "seconds", "method",
           "union_rule", "reweight", "targets", "iterations", "preset", "backbone", "commit", "run"]


def variant_settings(variant: str) -> dict:
    """The config fields of ``variant`` (CPCL variants name method "cpcl" explicitly)."""
    if variant not in VARIANTS:
        raise KitError(f"variant: unknown {variant!r}; valid variants: {', '.join(VARIANTS)}")
    return {"method": "cpcl", **VARIANTS[variant]}


def default_grid(preset: str = "smoke", seed: int = 0) -> dict:
    """The grid a preset runs when none is given (notebook 07): smoke 2 variants x 1/16 x 1 seed (a
    plumbing check); demo four (``DEMO_VARIANTS``) x 1/16 x 1 seed (fits ``make demo``'s time
    budget); every other preset all variants x 1/16 x 3 seeds (seed, seed + 1, seed + 2)."""
    if preset == "smoke":
        return {"variants": ["cpcl", "supervised"], "fractions": ["1/16"], "seeds": [seed]}
    if preset == "demo":
        return {"variants": list(DEMO_VARIANTS), "fractions": ["1/16"], "seeds": [seed]}
    return {"variants": list(VARIANTS), "fractions": ["1/16"], "seeds": [seed, seed + 1, seed + 2]}


def short_schedule(preset: str = "smoke") -> dict:
    """Settings notebook 07 puts on top of a preset by default: smoke 6 iterations (the last two with
    pseudo labels); demo a shortened schedule (4 runs in about 2 minutes on 2 CPU cores: a
    demonstration of the workflow, too short to rank the variants); any other preset nothing."""
    if preset == "smoke":
        return {"iterations": 6}
    if preset == "demo":
        return {"iterations": 60, "warmup_iters": 10, "sup_only_iters": 20, "rampup_iters": 10,
                "batch_size": 4, "unlabeled_batch_size": 4, "n_val_scenes": 100, "checkpoint_every": 100}
    return {}


def _split(value) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)


def normalise_grid(grid: dict, defaults: dict | None = None) -> dict:
    """Check a grid {variants, fractions, seeds} (lists or comma-separated strings; missing keys
    from ``defaults``, else all variants, 1/16, seed 0). Returns lists without duplicates."""
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise KitError(f"grid: unknown key(s) {', '.join(sorted(unknown))}; expected "
                       f"{', '.join(GRID_KEYS)} (e.g. variants=cpcl,supervised fractions=1/16 seeds=0,1)")
    base = defaults or {"variants": list(VARIANTS), "fractions": ["1/16"], "seeds": [0]}
    out = {}
    for key in GRID_KEYS:
        values = _split(grid[key]) if grid.get(key) is not None else list(base[key])
        if not values:
            raise KitError(f"grid: {key} is empty")
        out[key] = list(dict.fromkeys(values))
    if out["variants"] == ["all"]:
        out["variants"] = list(VARIANTS)
    bad = [v for v in out["variants"] if v not in VARIANTS]
    if bad:
        raise KitError(f"grid: unknown variant(s) {', '.join(map(repr, bad))}; valid variants: "
                       f"{', '.join(VARIANTS)} (or all)")
    fractions = []
    for f in out["fractions"]:
        if str(f).strip() != ALL_LABELED:  # "all": every scene labeled (the "full" reference)
            parse_labeled(f)  # raises a KitError naming the bad value
        fractions.append(str(f).replace(" ", ""))
    out["fractions"] = list(dict.fromkeys(fractions))
    seeds = []
    for s in out["seeds"]:
        try:
            seeds.append(int(s))
        except (TypeError, ValueError):
            raise KitError(f"grid: seeds must be integers, got {s!r}") from None
    out["seeds"] = list(dict.fromkeys(seeds))
    return out


def parse_grid(items: list[str] | None, defaults: dict | None = None) -> dict:
    """CLI words -> grid: ``["variants=cpcl,supervised", "fractions=1/16,1/8", "seeds=0,1"]``.
    Missing keys come from ``defaults`` (else: all variants, 1/16, seed 0); ``variants=all``."""
    grid = {}
    for item in items or []:
        if "=" not in item:
            raise KitError(f"--grid {item}: expected key=value with key one of {', '.join(GRID_KEYS)}")
        key, value = (p.strip() for p in item.split("=", 1))
        if key in grid:
            raise KitError(f"--grid: {key} given twice")
        grid[key] = value
    return normalise_grid(grid, defaults)


def grid_cells(grid: dict) -> list[tuple[str, str, int]]:
    """The (variant, fraction, seed) runs of a normalised grid, in the order they train."""
    return list(itertools.product(grid["variants"], grid["fractions"], grid["seeds"]))


def run_config(variant: str, fraction: str, seed: int, preset: str = "smoke", overrides: dict | None = None):
    """The Config of one grid cell: preset, then ``overrides``, then the variant, fraction and seed."""
    return make_config(preset, {**(overrides or {}), **variant_settings(variant),
                                "labeled": str(fraction), "seed": int(seed)})


def run_grid(grid: dict | list[dict], out_dir, preset: str = "smoke", overrides: dict | None = None,
             progress: bool = True, log=print, keep_checkpoints: bool | tuple = True, jobs: int = 1,
             threads: int | None = None, stages: int = 0) -> pd.DataFrame:
    """Run every (variant, fraction, seed) of ``grid`` into ``out_dir`` and return the table of all
    finished runs there (also written to ``out_dir/ablation.csv``). ``grid`` may be a list of grids
    (their cells in order, duplicates once), e.g. a few variants at 1/16 plus one at labeled="all".

    Finished runs (metrics.json present) are skipped, interrupted ones (checkpoint, no metrics)
    resumed. ``overrides``: config fields for every run (strings are parsed, as ``--set``).
    ``log``: a function for one status line per run (None: silent). ``keep_checkpoints=False``
    deletes each finished run's checkpoint.pt (hundreds of MB each) after its metrics are written;
    a tuple of variant names keeps only those variants' checkpoints (their nets stay loadable).
    ``jobs=N`` trains N runs at once in worker processes with ``threads`` torch threads each
    (default: cores // N). Small CPU models use cores better that way: on 2 cores two one-thread
    CPCL runs make 1.3x the steps of one two-thread run. Results do not depend on ``jobs``.
    ``stages=N``: the two-net runs keep N stage snapshots (``runs.stage_iterations``) for notebook
    08's slider; training pauses and resumes exactly there, so the results do not change.
    """
    grids = [normalise_grid(g) for g in ([grid] if isinstance(grid, dict) else grid)]
    if jobs < 1:
        raise KitError(f"jobs: expected at least 1, got {jobs}")
    if threads is not None and threads < 1:
        raise KitError(f"threads: expected at least 1, got {threads}")
    out = Path(out_dir)
    cells = list(dict.fromkeys(c for g in grids for c in grid_cells(g)))
    # Build and check every config first: a bad override, or a folder that holds a run with other
    # settings, fails before hours of training, not after.
    configs = [run_config(v, f, s, preset, overrides) for v, f, s in cells]
    if jobs > 1 or (threads or 1) > 1:
        # Runs side by side use the cores better one thread each (and several torch threads set a
        # float order of their own): no second thread per net.
        configs = [dataclasses.replace(c, net_threads=False) for c in configs]
    say = log or (lambda *_: None)
    todo = []
    for k, ((variant, fraction, seed), cfg) in enumerate(zip(cells, configs), start=1):
        run_dir = out / run_name(variant, fraction, seed)
        runs.check_same_run(run_dir, cfg)
        tag = f"[{k}/{len(cells)}] {variant} {fraction} seed {seed}"
        if runs.is_finished(run_dir):
            say(f"{tag}: done before, skipped")
            continue
        snaps = tuple(runs.stage_iterations(cfg, stages)) if stages and registry.method(cfg.method).nets == 2 else ()
        keep = keep_checkpoints if isinstance(keep_checkpoints, bool) else variant in keep_checkpoints
        todo.append((tag, (cfg, run_dir, keep, progress, snaps)))
    if jobs == 1 or len(todo) <= 1:
        busy = []
        for tag, args in todo:
            say(f"{tag}: {'resuming' if runs.has_checkpoint(args[1]) else 'training'} "
                f"({args[0].iterations} iterations) ...")
            with _torch_threads(threads):
                if not _finished(tag, _train_cell(*args), out, say):
                    busy.append((tag, args))
    else:
        busy = _run_parallel(todo, out, jobs, threads, progress, say)
    for tag, args in busy:  # runs another process was training: wait for it (or take over if it died)
        say(f"{tag}: waiting for {files.holder(args[1]) or 'another process'} ...")
        _finished(tag, _train_cell(*args, wait=True), out, say)
    table = collect(out)
    write_table(table, out)
    return table


def _train_cell(cfg, run_dir: Path, keep_checkpoints: bool, progress: bool = False, stages: tuple = (),
                wait: bool = False):
    """Train (or resume) one grid cell in ``run_dir`` under its lock; returns (mIoU, seconds, how):
    how is "trained", or "finished by another process" when it was done once the lock was ours.
    None when another process holds the lock and ``wait`` is False."""
    t0 = time.perf_counter()
    try:
        with files.lock(run_dir, wait=wait):  # (run_or_load takes it again: the lock is reentrant)
            elsewhere = runs.is_finished(run_dir)  # finished by another process while we waited
            res = run_or_load(cfg, run_dir, progress=progress, nets=False, stages=stages)
    except files.RunBusy:
        return None
    if not keep_checkpoints:
        (run_dir / runs.CHECKPOINT).unlink(missing_ok=True)
    how = "finished by another process" if elsewhere else "trained"
    return res.metrics["miou"], time.perf_counter() - t0, how


def _finished(tag: str, result, out: Path, say) -> bool:
    """Report one cell; False when it was busy (another process trains it)."""
    if result is None:
        say(f"{tag}: busy, another process is training it; coming back to it at the end")
        return False
    miou, seconds, how = result
    say(f"{tag}: {how}, mIoU {100 * miou:.2f} in {seconds:.0f} s")
    write_table(collect(out), out)
    return True


@contextmanager
def _torch_threads(threads: int | None):
    """Train in this process with ``threads`` torch threads (None: as set), restored afterwards.

    ``--jobs 1 --threads 1`` must mean one thread here too: beside other runs on a 2-core machine, a
    run left at the default two OpenMP threads spins against them and took 5 s per CPCL step
    instead of 1."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_init(threads: int) -> None:
    import threading

    import torch

    torch.set_num_threads(threads)
    # A worker outlives a grid process killed without cleanup (SIGKILL, or SIGTERM, whose default
    # handler skips pool.terminate) and would go on training, holding its run's lock, on cores the
    # next grid needs. It stops once its parent is gone; the run resumes from its last checkpoint.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int, every: float = 2.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _worker_cell(item):
    tag, args = item
    return tag, _train_cell(*args)


def _run_parallel(todo: list, out: Path, jobs: int, threads: int | None, progress: bool, say) -> list:
    """Train the cells of ``todo`` in ``jobs`` spawned worker processes; returns the cells another
    process was busy with. The first failure stops the grid: the other workers are terminated
    (their runs resume from their last checkpoint)."""
    import multiprocessing

    from tqdm.auto import tqdm

    jobs = min(jobs, len(todo))
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    say(f"{len(todo)} runs in {jobs} worker processes, {threads} torch thread(s) each")
    # Longest first (two-net runs cost about 2-3x a supervised one), so no worker idles at the end
    # while another trains a long run alone. Results do not depend on the order.
    todo = sorted(todo, key=lambda item: -registry.method(item[1][0].method).nets)
    for tag, (cfg, run_dir, *_) in todo:
        say(f"{tag}: queued to {'resume' if runs.has_checkpoint(run_dir) else 'train'} ({cfg.iterations} iterations)")
    by_tag = dict(todo)
    busy = []
    # Workers train without their own progress bars: one bar counts the runs.
    work = [(tag, (cfg, run_dir, keep, False, snaps)) for tag, (cfg, run_dir, keep, _, snaps) in todo]
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_init, initargs=(threads,))
    try:
        with tqdm(total=len(todo), desc="runs", disable=not progress) as bar:
            for tag, result in pool.imap_unordered(_worker_cell, work):
                if not _finished(tag, result, out, say):
                    busy.append((tag, by_tag[tag]))
                bar.update(1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return busy


def _row(run_dir: Path) -> dict | None:
    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.json"
    if not (metrics_path.exists() and config_path.exists()):
        return None
    parts = run_dir.name.split("__")
    if len(parts) != 3 or parts[0] not in VARIANTS or not parts[2].startswith("seed"):
        return None
    # A damaged file is one line naming it, never a row dropped without a word.
    m = runs.read_metrics(run_dir)
    c = runs.read_object(config_path, "a run's settings (a JSON object)")
    nan = float("nan")
    return {"variant": parts[0], "labeled": str(c.get("labeled")), "seed": int(c.get("seed", -1)),
            "miou": m.get("miou", nan), "digit_miou": m.get("digit_miou", nan),
            "pixel_acc": m.get("pixel_acc", nan), "seconds": m.get("seconds", nan),
            # two-net runs: net 2 and the ensemble beside net 1 (the paper's number)
            "miou_net2": m.get("branches", {}).get("2", {}).get("miou", nan),
            "miou_ensemble": m.get("branches", {}).get("ensemble", {}).get("miou", nan),
            "method": c.get("method"), "union_rule": c.get("union_rule"), "reweight": c.get("reweight"),
            "targets": ",".join(c.get("targets", [])), "iterations": c.get("iterations"),
            "preset": c.get("preset"),
            # the backbone weights it started from (runs.py's pretrain.fingerprint; older runs: unknown)
            "backbone": (m.get("backbone_init") or {}).get("sha256", "unknown"),
            # the commit that trained it ("+dirty": cpcl_kit/ had uncommitted changes; older runs: unknown)
            "commit": _trained_by(m.get("code") or {}), "run": run_dir.name}


def _trained_by(code: dict) -> str:
    if not code.get("commit"):
        return "unknown"
    return code["commit"] + ("+dirty" if code.get("dirty") else "")


def _run_dirs(out_dir) -> list[Path]:
    out = Path(out_dir)
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []


def sort_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in grid order: variants as in VARIANTS, then fraction, then seed."""
    order = {v: i for i, v in enumerate(VARIANTS)}
    frac = table["labeled"].map(lambda s: _fraction_key(s))
    return (table.assign(_v=table["variant"].map(order), _f=frac)
            .sort_values(["_v", "_f", "seed"]).drop(columns=["_v", "_f"]).reset_index(drop=True))


def _fraction_key(s: str) -> float:
    try:
        v = parse_labeled(s)
    except KitError:
        return math.inf
    return float(v) if isinstance(v, float) else 1.0 + v  # counts after fractions


def collect(out_dir) -> pd.DataFrame:
    """One row per finished run (metrics.json present) under ``out_dir``: variant, labeled, seed,
    miou, digit_miou, pixel_acc, seconds and the run's method / union_rule / reweight / targets /
    iterations. Folders of unfinished runs are left out."""
    rows = [r for r in (_row(d) for d in _run_dirs(out_dir)) if r is not None]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return sort_rows(pd.DataFrame(rows, columns=COLUMNS))


def per_class(out_dir) -> pd.DataFrame:
    """Long table of the finished runs' per-class IoU: variant, labeled, seed, class, iou."""
    rows = []
    for d in _run_dirs(out_dir):
        r = _row(d)
        if r is None:
            continue
        m = json.loads((d / "metrics.json").read_text())
        names = m.get("class_names") or [str(i) for i in range(len(m.get("per_class_iou", [])))]
        rows += [{"variant": r["variant"], "labeled": r["labeled"], "seed": r["seed"], "class": n,
                  "iou": float("nan") if v is None else v} for n, v in zip(names, m.get("per_class_iou", []))]
    return pd.DataFrame(rows, columns=["variant", "labeled", "seed", "class", "iou"])


def summarise(table: pd.DataFrame, metric: str = "miou", baseline: str = "cpcl") -> pd.DataFrame:
    """Mean ± sd of ``metric`` (in %) over seeds per variant and fraction, and the difference of the
    mean to ``baseline``'s at the same fraction (in points)."""
    if table.empty:
        return pd.DataFrame(columns=["variant", "labeled", "runs", "mean (%)", "sd (%)", f"Δ vs {baseline}"])
    g = table.assign(v=100 * table[metric].astype(float)).groupby(["variant", "labeled"], sort=False)["v"]
    s = g.agg(runs="count", mean="mean", sd="std").reset_index()
    base = s[s["variant"] == baseline].set_index("labeled")["mean"]
    s[f"Δ vs {baseline}"] = s["mean"] - s["labeled"].map(base)
    s = s.rename(columns={"mean": "mean (%)", "sd": "sd (%)"})
    return s.round(2)


def _paired_verdicts(table: pd.DataFrame, baseline: str, metric: str, noise_table) -> list:
    """[(variant, labeled, {seed: difference in points}, noise.Verdict)] per variant and fraction,
    unrounded. Only mIoU is judged: the noise table measures mIoU."""
    from .noise import compare_seeds

    t = table.assign(v=100 * table[metric].astype(float))
    base = t[t["variant"] == baseline].set_index(["labeled", "seed"])["v"]
    out = []
    for (variant, labeled), g in t[t["variant"] != baseline].groupby(["variant", "labeled"], sort=False):
        d = {int(r.seed): r.v - base[(labeled, r.seed)] for r in g.itertuples() if (labeled, r.seed) in base}
        if d:
            judge = noise_table if metric == "miou" else None
            out.append((variant, labeled, d, compare_seeds(variant, baseline, list(d.values()), judge, list(d))))
    return out


# The paired 95 % interval of the mean difference (noise.paired_interval), as table columns.
LOW, HIGH = "95 % low", "95 % high"


def paired(table: pd.DataFrame, baseline: str = "cpcl", metric: str = "miou", noise_table=None) -> pd.DataFrame:
    """Each variant minus ``baseline`` on the same seed and fraction, in points of ``metric``: one
    column per seed, the mean, the sd of the per-seed differences, the paired 95 % interval of the
    mean (``LOW``, ``HIGH``; NaN for one seed), the float-order ``floor`` the verdict used (with a
    noise table), and the ``verdict`` of
    ``noise.compare_seeds`` against ``noise_table`` (a ``noise.NoiseTable``: ahead / behind / within
    the noise; "not judged" without one, or for another metric than mIoU). Seeds where either run is
    missing are left out of that row."""
    rows = []
    for variant, labeled, d, verdict in _paired_verdicts(table, baseline, metric, noise_table):
        v = np.array(list(d.values()))
        low, high = verdict.interval or (float("nan"), float("nan"))
        rows.append({"variant": variant, "labeled": labeled, **{f"seed {k}": x for k, x in sorted(d.items())},
                     "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                     LOW: low, HIGH: high,
                     **({"floor": verdict.floor} if verdict.floor is not None else {}),
                     "verdict": verdict.label or "not judged"})
    cols = ["variant", "labeled"]
    if not rows:
        return pd.DataFrame(columns=cols + ["mean", "sd", LOW, HIGH, "verdict"])
    return _no_negative_zero(pd.DataFrame(rows).set_index(cols).round(2))


def _no_negative_zero(df: pd.DataFrame) -> pd.DataFrame:
    """A rounded table prints -0.0 for a tiny negative; + 0.0 makes it 0.0 (NaN stays NaN)."""
    numeric = df.select_dtypes("float").columns  # (counts stay integers)
    return df.assign(**{c: df[c] + 0.0 for c in numeric})


def verdicts(table: pd.DataFrame, baseline: str = "cpcl", noise_table=None, metric: str = "miou") -> list[str]:
    """``noise.compare_seeds``'s sentence for each variant minus ``baseline`` (paired by seed, per
    fraction): what a grid says, computed from its runs and the preset's noise table."""
    return [f"{labeled}: {verdict.text}" for _, labeled, _, verdict in
            _paired_verdicts(table, baseline, metric, noise_table)]


# What each variant changes, in a line: the tables of notebook 07 and ``lesson``.
VARIANT_NOTES = {
    "cpcl": "the full method: net 1 learns the intersection, net 2 the union, confidence weights",
    "inter_only": "both nets learn the intersection (conservative only)",
    "union_only": "both nets learn the union (progressive only)",
    "no_reweight": "every pixel weight is 1",
    "union_by_confidence": "disagreements go to the more confident net, not the more disputed class",
    "cps": "cross pseudo supervision: each net learns the other's hard label, no weights",
    "supervised": "one net, labeled images only",
    "first_release": "the official code's first release: one confidence per teacher and batch, intersection "
                     "loss averaged over its labeled pixels",
    "batch_weight": "only the first release's batch-wise confidence",
    "inter_over_labeled": "only the first release's normaliser of the intersection loss",
    "cpcl_lambda_1.28": "CPCL with λ = 1.28, the unsupervised strength of CPS",
    "cps_lambda_0.78": "CPS with λ = 0.78, CPCL's effective strength",
    "teacher_eval": "the teachers predict with BatchNorm's running statistics (eval mode)",
    "pseudo_void_band": "no pseudo label within 1 px of either teacher's outlines",
    "no_cutmix": "no CutMix: the students learn on the teachers' own image",
    "cps_no_cutmix": "CPS without CutMix",
    "student_affine": "the students see the mixed scene rotated, scaled and shifted",
    "affine_no_cutmix": "the warp without CutMix: the students see the teachers' own scene, warped",
    "cps_affine_no_cutmix": "CPS with the warp and without CutMix",
}
# The committed grids of benchmarks/ablation.py: one row per run (.csv) and where it comes from (.json).
RESULTS = RESULTS_DIR


def committed_grid(preset: str = "benchmark", folder=RESULTS, name: str | None = None) -> tuple[pd.DataFrame, dict] | None:
    """(table, provenance) of the committed ``benchmarks/ablation.py`` grid of ``preset`` (or of the
    results named ``name``, ``--name`` there), or None."""
    name = name or f"ablation-{preset}"
    csv, meta = Path(folder) / f"{name}.csv", Path(folder) / f"{name}.json"
    if not (results_here(folder) and csv.exists() and meta.exists()):
        return None
    return pd.read_csv(csv, dtype={"labeled": str, "commit": str, "backbone": str}), json.loads(meta.read_text())


RECIPES = {"preset": "the preset as it is", "cutmix": "an older recipe (the official CutMix, train-mode teachers)"}


def provenance(meta: dict) -> str:
    """Where a committed grid comes from, in one line: preset, recipe, runs, seeds, commits, command,
    wall time."""
    wall = meta.get("wall_seconds")
    recipe = RECIPES.get(meta.get("recipe", "cutmix"), meta.get("recipe"))
    # a table written by --collect-only names the call that trained its runs too: that is the rerun
    trained = [c["command"] for c in meta.get("wall_calls", []) if c.get("command")]
    how = (f" with `{trained[-1]}`, tabulated by `{meta['command']}`" if trained and "--collect-only" in
           meta["command"] and trained[-1] != meta["command"] else f": `{meta['command']}`")
    where = "; ".join(meta.get("cpus") or []) or "2 CPU cores"
    return (f"committed grid ({meta['preset']} preset, {recipe}, {meta['runs_finished']} of "
            f"{meta['runs_expected']} runs, seeds {', '.join(map(str, meta['seeds']))}), trained by commit(s) "
            f"{', '.join(meta['commits'])}{how}"
            + (f", {wall / 3600:.1f} h of grid wall time on {where}" if wall else ""))


def grid_status(table: pd.DataFrame, meta: dict) -> str:
    """How complete a committed grid is, in one sentence: runs finished of those planned, and per
    variant the seeds still missing (the comparisons pair only the seeds both runs finished)."""
    planned, done = meta.get("runs_expected", 0), len(table)
    if done >= planned:
        return f"All {planned} runs of the grid are finished ({len(meta['variants'])} variants x seeds " \
               f"{', '.join(map(str, meta['seeds']))})."
    have = set(zip(table["variant"], table["seed"].astype(int)))
    missing = {v: [s for s in meta["seeds"] if (v, s) not in have] for v in meta["variants"]}
    gaps = "; ".join(f"{v}: seed{'s' if len(m) > 1 else ''} {', '.join(map(str, m))}" for v, m in missing.items() if m)
    return (f"The grid is not finished: {done} of {planned} runs so far (still missing: {gaps}). Each "
            f"comparison below pairs the seeds where both of its runs are finished; rerun the grid's command "
            f"(it resumes) or `--collect-only` to tabulate more.")


def grid_noise_table(table: pd.DataFrame, meta: dict, folder=RESULTS):
    """The noise table the verdicts on a committed grid are judged against: the preset's
    (``noise.for_preset``) when the grid trained the very recipe it measured (its recorded CPCL
    config; method, fraction and seed aside) from the same backbone weights. None otherwise: a floor
    measured on one recipe and init says nothing of another."""
    from ..config import load_config_dict
    from .noise import for_preset

    noise_table = for_preset(meta["preset"], folder)
    if noise_table is None or not meta.get("config") or "backbone" not in table:
        return None
    grid_cfg = load_config_dict(meta["config"])
    measured = {**noise_table.meta["config"], "method": grid_cfg.method, "labeled": grid_cfg.labeled,
                "seed": grid_cfg.seed}
    same_init = "backbone" in noise_table.runs and set(table["backbone"]) <= set(noise_table.runs["backbone"])
    return noise_table if same_init and not runs.differing_settings(measured, grid_cfg) else None


def pair_verdict(table: pd.DataFrame, a: str, b: str, noise_table=None, labeled: str = "1/16"):
    """``noise.compare_seeds`` on variant ``a`` − variant ``b`` (mIoU points) over the seeds of
    ``labeled`` where both runs are finished: (Verdict, per-seed differences) or None when no seed
    has both."""
    t = table[table["variant"].isin((a, b)) & (table["labeled"].astype(str) == labeled)]
    for _, _, d, verdict in _paired_verdicts(t.sort_values("seed"), b, "miou", noise_table):
        return verdict, list(d.values())
    return None


def _judged(noise_table) -> str:
    return "" if noise_table is not None else (" No noise table holds for this grid's recipe and backbone, "
                                               "so the differences are shown, not judged.")


def ingredient_findings(table: pd.DataFrame, noise_table=None, planned=None) -> list[str]:
    """What the grid says about CPCL's ingredients: a summary sentence, then each of the paper's
    ablations (``PAPER_ABLATIONS``) minus CPCL with its verdict and paired interval. ``planned``: the
    grid's variants (an ablation it does not plan is named as such, not as unfinished)."""
    from .noise import AHEAD, BEHIND

    asked = [v for v in PAPER_ABLATIONS if planned is None or v in planned]
    found = {v: pair_verdict(table, v, "cpcl", noise_table) for v in asked}
    lines = [f"{v} ({VARIANT_NOTES[v]}): " + (r[0].text if r else "no seed of this grid has both it and CPCL "
                                                                   "finished yet.") for v, r in found.items()]
    lines += [f"{v} ({VARIANT_NOTES[v]}): not in this grid." for v in PAPER_ABLATIONS if v not in asked]
    measured = {v: r[0] for v, r in found.items() if r}
    moved = {v: x for v, x in measured.items() if x.label in (AHEAD, BEHIND)}
    if not measured:
        return ["None of the paper's ablations has a seed paired with CPCL in this grid yet."] + lines
    n = max(len(r[1]) for r in found.values() if r)
    which = (f"the paper's ablations measured here ({len(measured)} of {len(PAPER_ABLATIONS)}, up to {n} seed"
             f"{'s' if n > 1 else ''} each)")
    if noise_table is None:
        head = f"{which[0].upper()}{which[1:]}, each against CPCL on the same seeds.{_judged(noise_table)}"
    elif moved:
        head = (f"Of {which}, {len(moved)} change{'s' if len(moved) == 1 else ''} the score beyond the noise: "
                + "; ".join(f"{v} is {x.label} {'of ' if x.label == AHEAD else ''}CPCL by {abs(x.difference):.1f} "
                            f"points on the mean" for v, x in moved.items())
                + ". The others cannot be told from CPCL at these seeds.")
    else:
        head = (f"None of {which} moves the score beyond the noise: on this benchmark no single ingredient of "
                f"CPCL can be shown to change the score at these seeds.")
    return [head] + lines


def cpcl_vs_cps(table: pd.DataFrame, noise_table=None) -> str:
    """Whether CPCL beats CPS on the grid, in a sentence: the answer, the verdict with its paired
    interval and, while undecided, about how many seeds of the same spread would decide it."""
    from .noise import AHEAD, BEHIND, DECISIVE, WITHIN, seeds_for

    found = pair_verdict(table, "cpcl", "cps", noise_table)
    if found is None:
        return "Does CPCL beat CPS on this benchmark? No seed of this grid has both a CPCL and a CPS run finished yet."
    verdict, d = found
    # an interval inside ± DECISIVE answers the question even where the sign stays open
    narrow = verdict.interval is not None and -DECISIVE <= verdict.interval[0] and verdict.interval[1] <= DECISIVE
    undecided = f"Not by more than {DECISIVE:.0f} point either way at these seeds" if narrow else "Not decided"
    answer = {AHEAD: "Yes", BEHIND: "No, CPS is ahead", WITHIN: undecided, None: "Not judged"}[verdict.label]
    more = ""
    needed = seeds_for(d) if verdict.label in (WITHIN, None) else None
    if needed and needed > len(d):
        more = (f" If the per-seed differences kept this spread, about {needed} seeds would narrow the interval "
                f"to ±{DECISIVE:.0f} point.")
    return f"Does CPCL beat CPS on this benchmark? {answer}. {verdict.text}{more}"


def method_findings(table: pd.DataFrame, noise_table=None) -> list[str]:
    """The semi-supervised gain on the grid: CPCL and CPS each minus supervised (verdict and interval)."""
    from .noise import LABELS

    out = []
    for a in ("cpcl", "cps"):
        found = pair_verdict(table, a, "supervised", noise_table)
        out.append(found[0].text if found else
                   f"{LABELS[a]} − supervised: no seed of this grid has both runs finished yet.")
    return out


def strength_findings(table: pd.DataFrame, noise_table=None, planned=None) -> list[str]:
    """CPCL's unsupervised loss is weaker than CPS's (agreeing pixels only, weights below 1): the
    variants that match the two strengths (``STRENGTH_VARIANTS``), each against the method it is
    compared with. ``planned``: the grid's variants; one it does not plan is said once, not per pair."""
    pairs = (("cps_lambda_0.78", "cpcl"), ("cpcl_lambda_1.28", "cps"))
    if planned is not None and not set(STRENGTH_VARIANTS) & set(planned):
        return [f"This grid has no strength-matched variant ({', '.join(STRENGTH_VARIANTS)}): it cannot say "
                f"whether the unsupervised strength alone separates CPCL from CPS (add them with --variants)."]
    out = []
    for a, b in pairs:
        found = pair_verdict(table, a, b, noise_table)
        out.append(f"{a} ({VARIANT_NOTES[a]}): " + (found[0].text if found else
                                                   f"no seed of this grid has both it and {b} finished yet."))
    return out


def lesson(table: pd.DataFrame, noise_table=None) -> pd.DataFrame:
    """A grid in one student-sized table: per variant, what it changes, its seeds paired with CPCL,
    its mIoU minus CPCL's (mean and paired 95 % interval, in points) and the verdict against
    ``noise_table``; the paper's ablations first. Empty when nothing pairs with CPCL."""
    rows = []
    for variant, labeled, d, verdict in _paired_verdicts(table, "cpcl", "miou", noise_table):
        low, high = verdict.interval or (float("nan"), float("nan"))
        rows.append({"variant": variant, "what it changes": VARIANT_NOTES.get(variant, ""), "labeled": labeled,
                     "seeds": len(d), "Δ vs cpcl (mean)": verdict.difference, LOW: low, HIGH: high,
                     "verdict": verdict.label or "not judged"})
    if not rows:
        return pd.DataFrame()
    order = {v: k for k, v in enumerate(PAPER_VARIANTS + tuple(VARIANTS))}
    out = pd.DataFrame(rows).sort_values("variant", key=lambda c: c.map(order), kind="stable")
    return _no_negative_zero(out.set_index("variant").round(1))


def write_table(table: pd.DataFrame, out_dir) -> Path:
    """``out_dir/ablation.csv``, written atomically (never half-written)."""
    return files.write_csv(Path(out_dir) / TABLE, table)
