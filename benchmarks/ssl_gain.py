"""Does CPCL help? Supervised vs CPS vs CPCL (and full supervision) on digit scenes, 1/16 labeled.

    .venv/bin/python benchmarks/ssl_gain.py --jobs 2                 # benchmark preset, seeds 0, 1, 2
    .venv/bin/python benchmarks/ssl_gain.py --collect-only           # the table of the runs finished so far

The runs are the prepared run set (``cpcl_kit.experiments.prepared``: supervised, CPS and CPCL at 1/16 and
supervised on every scene, "full") on each seed, by default in the prepared set's folder
(``~/.cache/cpcl-kit/prepared/<preset>``), so the benchmark's seed 0 is also what notebooks 04-08
show; ``--runs`` elsewhere. A killed benchmark resumes where it stopped. The summary goes to
``benchmarks/results/ssl_gain-<preset>.json`` and ``.md``: per method mIoU and digit-only mIoU per
seed, mean, sd and seconds, the pseudo-label statistics at the end, the paired differences per
seed with their verdicts, the grid's wall seconds, the command and the commit. Results hold
measurements only: the goals a benchmark aims at are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cpcl_kit.typed import parse_sets  # noqa: E402
from cpcl_kit.experiments import noise, prepared  # noqa: E402
from cpcl_kit.experiments.ablate import collect  # noqa: E402
from cpcl_kit.files import write_json, write_text  # noqa: E402
from cpcl_kit.provenance import code_version, command_line  # noqa: E402

NAMES = [name for name, _, _ in prepared.MEMBERS]
WALL = "ssl_gain_wall.json"  # in the runs folder: wall seconds of the calls that trained runs


def commit() -> str:
    """The short commit of this checkout (the kit imported from it is the code that trains)."""
    return code_version()["commit"] or "unknown"


# Pseudo-label statistics of the two-net methods, from each run's history (analysis only).
LABEL_STATS = ("agreement", "acc_inter", "acc_union", "w_inter", "w_union")


def label_stats(run_dir: Path, last: int = 5) -> dict:
    """Mean of the last ``last`` logged rows of a run's pseudo-label statistics (empty if none)."""
    path = run_dir / "history.csv"
    if not path.exists():
        return {}
    hist = pd.read_csv(path)
    cols = [c for c in LABEL_STATS if c in hist.columns]
    tail = hist.dropna(subset=cols[:1]).tail(last) if cols else hist.iloc[:0]
    return {c: round(float(tail[c].mean()), 4) for c in cols if len(tail)}


def member_rows(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{member name: its finished rows, by seed} from an ablation table."""
    out = {}
    for name, variant, frac in prepared.MEMBERS:
        rows = table[(table["variant"] == variant) & (table["labeled"] == frac)].sort_values("seed")
        if not rows.empty:
            out[name] = rows
    return out


def summarise(table, preset: str, runs: Path | None = None, wall_seconds: float | None = None,
              code_commit: str | None = None) -> dict:
    """Per member: mIoU and digit-only mIoU per seed, mean, sd, seconds, and (two-net methods, from
    ``runs``) the pseudo-label statistics at the end; the paired differences per seed."""
    out = {"preset": preset, "labeled": prepared.LABELED, "commit": code_commit or commit()}
    if runs is not None and not table.empty:
        first = json.loads((runs / table["run"].iloc[0] / "metrics.json").read_text())
        out["class_names"] = first.get("class_names")
    rows = member_rows(table)
    for name, r in rows.items():
        out[name] = {"seeds": r["seed"].tolist(), "miou": r["miou"].round(4).tolist(),
                     "digit_miou": r["digit_miou"].round(4).tolist(),
                     "mean": round(float(r["miou"].mean()), 4),
                     "std": round(float(r["miou"].std(ddof=1)), 4) if len(r) > 1 else 0.0,
                     "digit_mean": round(float(r["digit_miou"].mean()), 4),
                     "seconds": r["seconds"].round(1).tolist()}
        if runs is not None:  # per seed, for the per-class gains of notebook 07
            out[name]["per_class_iou"] = [json.loads((runs / d / "metrics.json").read_text())["per_class_iou"]
                                          for d in r["run"]]
        if name in ("cps", "cpcl"):
            out[name]["miou_net2"] = r["miou_net2"].round(4).tolist()
            out[name]["miou_ensemble"] = r["miou_ensemble"].round(4).tolist()
        stats = [label_stats(runs / d) for d in r["run"]] if runs is not None else []
        if any(stats):  # per seed, the last logged rows' mean
            out[name]["pseudo_labels_end"] = {k: [st.get(k) for st in stats] for k in LABEL_STATS
                                              if any(k in st for st in stats)}
    # Compare on the seeds every method finished, so a partial grid is still a paired comparison.
    methods = ("supervised", "cps", "cpcl")
    paired = sorted(set.intersection(*(set(out[m]["seeds"]) for m in methods))) \
        if all(m in out for m in methods) else []
    if paired:
        by_seed = {m: rows[m].set_index("seed")["miou"] for m in methods}
        diff = {f"{a}_minus_{b}": [round(100 * (by_seed[a][s] - by_seed[b][s]), 2) for s in paired]
                for a, b in (("cpcl", "supervised"), ("cps", "supervised"), ("cpcl", "cps"))}
        out["paired"] = {"seeds": paired, **{k: {"per_seed": v, "mean": round(sum(v) / len(v), 2)}
                                             for k, v in diff.items()}}
    out["grid_wall_seconds"] = wall_seconds
    return out


def markdown(summary: dict, results: Path = HERE / "results") -> str:
    lines = ["| method | mIoU per seed (%) | mean ± sd (%) | digit-only mean (%) | seconds per run |",
             "|---|---|---|---|---|"]
    for m in NAMES:
        if m in summary:
            s = summary[m]
            lines.append(f"| {m} | {', '.join(f'{100 * v:.1f} (s{k})' for k, v in zip(s['seeds'], s['miou']))} | "
                         f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} | {100 * s['digit_mean']:.1f} | "
                         f"{sum(s['seconds']) / len(s['seconds']):.0f} |")
    for m in ("cps", "cpcl"):
        pl = summary.get(m, {}).get("pseudo_labels_end")
        if pl and "agreement" in pl:
            acc = {k: [v for v in pl.get(k, []) if v is not None] for k in ("agreement", "acc_inter", "acc_union")}
            mean = {k: 100 * sum(v) / len(v) for k, v in acc.items() if v}
            lines.append(f"\n{m} pseudo labels at the end: agreement {mean['agreement']:.1f} %"
                         + (f", intersection accuracy {mean['acc_inter']:.1f} %, union accuracy "
                            f"{mean['acc_union']:.1f} %" if "acc_inter" in mean else ""))
    if "paired" in summary:
        table = noise.for_preset(summary["preset"], results)
        lines.append("\nPaired by seed, with verdicts against the "
                     + (f"[noise table](noise-{table.preset}.md):" if table else "noise table (none measured yet):"))
        lines += [f"- {text}" for text in prepared.verdicts(summary, table)]
    if summary.get("grid_wall_seconds"):
        lines.append(f"\nGrid wall time: {summary['grid_wall_seconds'] / 60:.1f} min")
    return "\n".join(lines)


def write_summary(summary: dict, results: Path, seeds: str, noise_from: Path | None = None) -> str:
    """``ssl_gain-<preset>.json`` and its ``.md`` under ``results`` (verdicts against the noise table
    in ``noise_from``, default ``results``); returns the markdown tables."""
    path = results / f"ssl_gain-{summary['preset']}.json"
    write_json(path, summary)
    table_md = markdown(summary, noise_from or results)
    write_text(path.with_suffix(".md"),
               f"# ssl_gain ({summary['preset']} preset, 1/16 labeled, seeds {seeds}, commit {summary['commit']})\n\n"
               f"`{summary['command']}`\n\n{table_md}\n")
    return table_md


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="benchmark")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--runs", type=Path, help="run folder (default: the prepared set's, prepared.default_dir)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (worker processes)")
    p.add_argument("--collect-only", action="store_true",
                   help="summarise the runs finished so far, train nothing (a look at a grid still running)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    runs = args.runs or prepared.default_dir(args.preset)
    seeds = [int(s) for s in args.seeds.split(",")]
    started_at = commit()  # the code that trains; a later commit during a long grid does not count
    wall_file = runs / WALL
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {"seconds": 0.0, "calls": []}
    if args.collect_only:
        table = collect(runs)
    else:
        before = len(collect(runs))
        t0 = time.perf_counter()
        table = prepared.prepare(runs, preset=args.preset, seeds=seeds, jobs=args.jobs,
                                 overrides=parse_sets(args.sets), progress=not args.quiet)
        if len(table) > before:  # this call trained runs: its wall time counts towards the grid's
            wall["seconds"] += time.perf_counter() - t0
            wall["calls"].append({"seconds": round(time.perf_counter() - t0, 1), "runs_trained":
                                  len(table) - before, "jobs": args.jobs, "commit": started_at})
            write_json(wall_file, wall)
    table = table[table["seed"].isin(seeds)]
    trained_by = sorted({c["commit"] for c in wall["calls"] if c.get("commit")})
    summary = summarise(table, args.preset, runs, wall["seconds"] or None,
                        code_commit=",".join(trained_by) or started_at)
    expected = len(prepared.MEMBERS) * len(seeds)
    summary["runs_finished"], summary["runs_expected"] = sum(len(v["seeds"]) for k, v in summary.items()
                                                             if k in NAMES), expected
    summary["command"] = command_line(__file__, argv)
    summary["wall_calls"] = wall["calls"]
    name = f"ssl_gain-{args.preset}.json"
    print(write_summary(summary, args.results, args.seeds))
    if summary["runs_finished"] < summary["runs_expected"]:
        print(f"\nonly {summary['runs_finished']} of {summary['runs_expected']} runs finished so far")
    print(f"\nwritten: {args.results / name}")
    return summary


if __name__ == "__main__":
    main()
