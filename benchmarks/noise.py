"""The noise floor of a preset: supervised, CPS and CPCL on several seeds, each in two float orders.

    .venv/bin/python benchmarks/noise.py                      # benchmark preset, seeds 0-2, 1 and 2 threads
    .venv/bin/python benchmarks/noise.py --runs DIR --jobs 2  # resumable; DIR/threads1, DIR/threads2
    .venv/bin/python benchmarks/noise.py --collect-only       # the table of the runs finished so far

The float order is set by the torch thread count: the 1-thread runs train ``--jobs`` at a time, the
2-thread runs one per two cores. ``DIR/threads1`` may be the folder of ``benchmarks/ssl_gain.py``
(the same runs: preset, seeds and settings equal), so that grid is not trained twice. Writes
``benchmarks/results/noise-<preset>.json`` and ``.md`` with every run, the commit, the command, the
wall seconds and the CPU; ``cpcl_kit.experiments.noise`` reads it for every verdict the kit prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cpcl_kit.config import make_config  # noqa: E402

from cpcl_kit.typed import parse_sets  # noqa: E402
from cpcl_kit.errors import KitError  # noqa: E402
from cpcl_kit.experiments import ablate, noise, prepared  # noqa: E402
from cpcl_kit.files import machine, write_json, write_text  # noqa: E402
from cpcl_kit.provenance import code_version, command_line, recorded_path  # noqa: E402

WALL = "noise_wall.json"  # in the runs folder: wall seconds of the calls that trained runs
# The table holds measurements only; the goal it is read against (CPCL ahead of supervised in every
# draw by a margin) is in benchmarks/README.md.


def train(runs: Path, preset: str, seeds: list[int], threads: list[int], jobs: int, progress: bool,
          overrides: dict | None = None, methods=noise.METHODS) -> float:
    """Train the missing runs; returns this call's wall seconds."""
    t0 = time.perf_counter()
    grid = {"variants": list(methods), "fractions": [prepared.LABELED], "seeds": seeds}
    cores = os.cpu_count() or 1
    for t in threads:
        ablate.run_grid(grid, runs / f"threads{t}", preset=preset, overrides=overrides,
                        jobs=jobs if t == 1 else max(1, cores // t), threads=t, progress=progress,
                        log=print if progress else None)
    return time.perf_counter() - t0


def rows(runs: Path, threads: list[int], seeds: list[int]) -> list[dict]:
    out = []
    for t in threads:
        table = ablate.collect(runs / f"threads{t}")
        table = table[table["variant"].isin(noise.METHODS) & (table["labeled"] == prepared.LABELED)
                      & table["seed"].isin(seeds)]
        out += [{"method": r.variant, "seed": int(r.seed), "threads": t, "order": noise.order_label(t),
                 "miou": round(float(r.miou), 5),
                 "digit_miou": round(float(r.digit_miou), 5), "seconds": round(float(r.seconds), 1),
                 "backbone": r.backbone, "commit": r.commit} for r in table.itertuples()]
    return out


def merged_rows(path: Path, preset: str, backbones: set[str]) -> list[dict]:
    """The runs of another machine's noise table, each labelled with that machine's float order
    (kept where the table is itself merged). Its runs must start from the same backbone as ours."""
    try:
        other = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise KitError(f"--merge {path}: cannot read a noise table there ({e})") from None
    if other.get("preset") != preset:
        raise KitError(f"--merge {path}: a table of the {other.get('preset')} preset, not {preset}")
    cpu = other.get("cpu", "another machine").split(" (")[0]
    theirs = {r.get("backbone") for r in other["runs"]}
    if theirs != backbones:
        raise KitError(f"--merge {path}: its runs start from backbone {', '.join(map(str, theirs))}, these "
                       f"from {', '.join(sorted(backbones))}; a noise table pairs runs of one init only")
    # its own orders are thread counts on its CPU; orders it merged from elsewhere name their CPU already
    return [{**r, "order": r["order"] if ", " in r.get("order", "") else noise.order_label(r["threads"], cpu),
             "torch": other.get("torch")} for r in other["runs"]]


def _md(df: pd.DataFrame) -> str:
    try:
        return df.to_markdown()
    except ImportError:  # tabulate missing (a machine without the kit's install): plain text
        return "```\n" + df.to_string() + "\n```"


def markdown(table: noise.NoiseTable) -> str:
    return "\n\n".join([
        f"# Noise floor ({table.preset} preset)", table.provenance(),
        "mIoU per method over every seed and float order:", _md(table.summary()),
        "Paired differences (points) per seed and float order, their range and the float-order floor "
        "(the most the float order alone moved the difference on one seed):",
        _md(table.pair_table())]) + "\n"


def main(argv=None) -> noise.NoiseTable:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="benchmark")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", default="1,2", help="torch thread counts, one float order each")
    p.add_argument("--methods", default=",".join(noise.METHODS), help="of supervised, cps, cpcl")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="settings changed from the preset (the table then holds for those settings only)")
    p.add_argument("--runs", type=Path, help="run folder (default ~/.cache/cpcl-kit/noise/<preset>)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--jobs", type=int, default=2, help="1-thread runs trained at once")
    p.add_argument("--merge", type=Path, action="append", default=[], metavar="JSON",
                   help="a noise table of the same preset measured on another machine: its runs join "
                        "this table as float orders of their own (labelled with that machine's CPU)")
    p.add_argument("--collect-only", action="store_true", help="summarise the finished runs, train nothing")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    runs = args.runs or prepared.cache_root() / "noise" / args.preset
    wall_file = runs / WALL
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {"seconds": 0.0, "calls": []}
    if not args.collect_only:
        before = len(rows(runs, threads, seeds))
        seconds = train(runs, args.preset, seeds, threads, args.jobs, not args.quiet, parse_sets(args.sets),
                        [m for m in args.methods.split(",") if m])
        if len(rows(runs, threads, seeds)) > before:
            wall["seconds"] += seconds
            wall["calls"].append({"seconds": round(seconds, 1), "commit": code_version()["commit"]})
            write_json(wall_file, wall)
    found = rows(runs, threads, seeds)
    if not found:  # before anything is written: a committed table is never replaced by an empty one
        raise KitError(f"--runs {runs}: no finished run of {args.methods} for seeds {args.seeds} there "
                       f"(folders threads{'/threads'.join(map(str, threads))})")
    for other in args.merge:
        found += merged_rows(other, args.preset, {r["backbone"] for r in found})
    command = command_line(__file__, argv)
    commits = sorted({r["commit"].removesuffix("+dirty") for r in found})
    # commit: the code that wrote this table; trained_by: the commits whose code trained its runs
    data = {"preset": args.preset, "commit": code_version()["commit"] or "unknown", "trained_by": commits,
            "command": command, "wall_seconds": round(wall["seconds"], 1) or None,
            "sets": args.sets, "config": make_config(args.preset, parse_sets(args.sets)).to_dict(),
            "merged": [recorded_path(m, "merge") for m in args.merge],
            "cpu": machine(), "torch": torch.__version__, "seeds": seeds, "threads": threads,
            "runs_expected": len(seeds) * len(threads) * len(args.methods.split(",")), "runs": found}
    path = noise.table_path(args.preset, args.results)
    write_json(path, data)
    table = noise.read_table(path)
    text = markdown(table)
    write_text(path.with_suffix(".md"), text)
    print(text)
    return table


if __name__ == "__main__":
    main()
