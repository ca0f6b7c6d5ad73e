"""Does CPCL help? Supervised vs CPS vs CPCL on digit scenes, 1/16 labeled, seeds 0, 1, 2.

    .venv/bin/python benchmarks/ssl_gain.py                 # benchmark preset (hours on 2 CPU cores)
    .venv/bin/python benchmarks/ssl_gain.py --preset demo   # a shorter look
    .venv/bin/python benchmarks/ssl_gain.py --jobs 2        # two runs at a time, one thread each

Runs go to ``benchmarks/runs/ssl_gain-<preset>/`` (git-ignored) through the ablation runner, so a
killed benchmark resumes where it stopped; the summary is written to
``benchmarks/results/ssl_gain[-<preset>].json``, and its markdown table printed and written beside it
(``.md``).
Goal (issue): CPCL − supervised ≥ +5 mIoU points on the mean, and CPCL ≥ CPS.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cpcl_kit.ablate import collect, run_grid  # noqa: E402
from cpcl_kit.config import parse_sets  # noqa: E402
from cpcl_kit.constants import METHODS  # noqa: E402
from cpcl_kit.runs import write_json, write_text  # noqa: E402



def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def summarise(table, preset: str, runs: Path | None = None) -> dict:
    """Per method: mIoU and digit-only mIoU per seed, mean, std, seconds, and (two-net methods, from
    ``runs``) the pseudo-label agreement and accuracies at the end of training; plus the goal checks."""
    out = {"preset": preset, "labeled": "1/16", "commit": commit()}
    for m in METHODS:
        rows = table[table["variant"] == m].sort_values("seed")
        if rows.empty:
            continue
        out[m] = {"seeds": rows["seed"].tolist(), "miou": rows["miou"].round(4).tolist(),
                  "digit_miou": rows["digit_miou"].round(4).tolist(),
                  "mean": round(float(rows["miou"].mean()), 4),
                  "std": round(float(rows["miou"].std(ddof=1)), 4) if len(rows) > 1 else 0.0,
                  "digit_mean": round(float(rows["digit_miou"].mean()), 4),
                  "seconds": rows["seconds"].round(1).tolist()}
        stats = [label_stats(runs / r) for r in rows["run"]] if runs is not None else []
        if any(stats):  # per seed, the last 100 logged iterations' mean
            out[m]["pseudo_labels_end"] = {k: [st.get(k) for st in stats] for k in LABEL_STATS
                                           if any(k in st for st in stats)}
    # Compare on the seeds every method finished, so a partial grid is still a paired comparison.
    paired = sorted(set.intersection(*(set(out[m]["seeds"]) for m in METHODS))) \
        if all(m in out for m in METHODS) else []
    if paired:
        mean = {m: float(table[(table["variant"] == m) & table["seed"].isin(paired)]["miou"].mean())
                for m in METHODS}
        gain = 100 * (mean["cpcl"] - mean["supervised"])
        out["goals"] = {"paired_seeds": paired, "cpcl_minus_supervised_points": round(gain, 2),
                        "gain_goal_met": gain >= 5, "cpcl_ge_cps": mean["cpcl"] >= mean["cps"],
                        "cpcl_minus_cps_points": round(100 * (mean["cpcl"] - mean["cps"]), 2)}
    return out


def markdown(summary: dict) -> str:
    lines = ["| method | mIoU per seed (%) | mean ± sd (%) | digit-only mean (%) | seconds per run |",
             "|---|---|---|---|---|"]
    for m in METHODS:
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
    if "goals" in summary:
        g = summary["goals"]
        lines.append(f"\nOn seeds {', '.join(map(str, g['paired_seeds']))} (finished by every method): "
                     f"CPCL − supervised {g['cpcl_minus_supervised_points']:+.1f} points "
                     f"(goal ≥ +5: {'met' if g['gain_goal_met'] else 'not met'}); CPCL − CPS "
                     f"{g['cpcl_minus_cps_points']:+.1f} points (CPCL ≥ CPS: {'yes' if g['cpcl_ge_cps'] else 'no'})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="benchmark")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--runs", type=Path, help="run folder (default benchmarks/runs/ssl_gain-<preset>)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (worker processes)")
    p.add_argument("--collect-only", action="store_true",
                   help="summarise the runs finished so far, train nothing (a look at a grid still running)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    runs = args.runs or HERE / "runs" / f"ssl_gain-{args.preset}"
    grid = {"variants": list(METHODS), "fractions": ["1/16"],
            "seeds": [int(s) for s in args.seeds.split(",")]}
    if args.collect_only:
        table = collect(runs)
    else:
        table = run_grid(grid, runs, preset=args.preset, overrides=parse_sets(args.sets),
                         progress=not args.quiet, jobs=args.jobs)
    table = table[(table["labeled"] == "1/16") & table["variant"].isin(METHODS)
                  & table["seed"].isin(grid["seeds"])]
    summary = summarise(table, args.preset, runs)
    summary["runs_finished"], summary["runs_expected"] = len(table), len(METHODS) * len(grid["seeds"])
    name = "ssl_gain.json" if args.preset == "benchmark" else f"ssl_gain-{args.preset}.json"
    write_json(args.results / name, summary)
    table_md = markdown(summary)
    write_text((args.results / name).with_suffix(".md"),
        f"# ssl_gain ({args.preset} preset, 1/16 labeled, seeds {args.seeds}, commit {summary['commit']})\n\n"
        f"{table_md}\n")
    print(table_md)
    if summary["runs_finished"] < summary["runs_expected"]:
        print(f"\nonly {summary['runs_finished']} of {summary['runs_expected']} runs finished so far")
    print(f"\nwritten: {args.results / name}")
    return summary


if __name__ == "__main__":
    main()
