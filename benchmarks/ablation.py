"""Which ingredient of CPCL matters, and does CPCL beat CPS? The variants on a preset, paired by seed.

    .venv/bin/python benchmarks/ablation.py --jobs 2 --runs <runs>   # benchmark preset as it is, seeds 0-2: hours
    .venv/bin/python benchmarks/ablation.py --collect-only --runs <runs>   # the tables of the runs finished so far
    .venv/bin/python benchmarks/ablation.py --recipe cutmix --variants cpcl,first_release --seeds 0

``--recipe preset`` (the default) trains the preset as it is, from the backbone the kit ships:
``ablate.PRESET_GRID_VARIANTS`` (CPCL, CPS, supervised and the paper's four ablations; add
``ablate.STRENGTH_VARIANTS`` with ``--variants`` to ask whether the unsupervised strength alone
separates CPCL from CPS) at 1/16, written as ``results/ablation-<preset>-preset.*``; notebook 07
reads the benchmark preset's. Its JSON records the recipe (``config``: CPCL's settings, which every
variant changes in one place), so verdicts are judged against the preset's noise table only where
that table measured the same recipe and backbone (``ablate.grid_noise_table``).

``--recipe cutmix`` puts ``RECIPE`` on top: the official CutMix, no student warp and train-mode
teachers, the recipe the older grids (``results/ablation-<preset>.*``, ``-b``, ``-c``:
``ablate.COMMITTED_VARIANTS``) were trained with, from backbones pretrained before the kit shipped
its own. Both run ``ablate.run_grid`` into ``~/.cache/cpcl-kit/ablation/<preset>`` (or ``--runs``).
Each writes ``.csv`` (one row per finished run of the grid, with the commit that trained it where
known and the backbone it started from), ``.json`` (where the table comes from: commits, command,
recipe, grid wall seconds, seeds) and ``.md`` (the findings as sentences, mean ± sd per variant,
each variant minus CPCL and minus CPS per seed with the paired 95 % interval and the verdict).

The committed table is extended, not replaced: its rows whose runs the run folder lacks (a fresh
machine, another folder) are kept with the commit that trained them, and a run finished in the folder
replaces its committed row; cells the committed table holds are not retrained, so on a new machine
``--jobs 2`` trains only what the table lacks. ``--fresh`` trains and tabulates the run folder alone.
A call whose ``--set`` values or recipe differ from the committed table's is refused, and so is one
whose runs start from other (or unknown) backbone weights than the committed rows: runs paired by
seed must share their init, and the same pretraining gives other weights on another CPU. ``--name``
writes a second grid beside the first.
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
from cpcl_kit.errors import KitError  # noqa: E402
from cpcl_kit.experiments import ablate, prepared  # noqa: E402
from cpcl_kit.files import machine, write_csv, write_json, write_text  # noqa: E402
from cpcl_kit.nets import pretrain  # noqa: E402
from cpcl_kit.provenance import command_line  # noqa: E402
from ssl_gain import commit  # noqa: E402  (the short commit of this checkout, the code that trains)

# The committed grids' recipe, applied before --set: CutMix with the official 3 boxes, the student
# sees the mixed scene as it is, the teachers predict in train mode. The benchmark preset has since
# dropped CutMix for an affine student view and eval-mode teachers; the variants
# (no_cutmix, affine_no_cutmix, teacher_eval, ...) are changes from this recipe.
RECIPE = ["cutmix_boxes=3", "student_aug=none", "teacher_bn=train"]
WALL = "ablation_wall.json"  # in the runs folder: the calls that trained runs, their commit and seconds
SSL_GAIN_WALL = "ssl_gain_wall.json"
COLUMNS = ["variant", "labeled", "seed", "miou", "digit_miou", "miou_net2", "miou_ensemble", "pixel_acc",
           "seconds", "iterations", "backbone", "commit", "run"]


def default_runs(preset: str) -> Path:
    """``$XDG_CACHE_HOME/cpcl-kit/ablation/<preset>`` (``~/.cache``): outside the tree, apart from the
    prepared set, whose runs follow today's preset."""
    return prepared.cache_root() / "ablation" / preset


def _read(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def trained_by(runs: Path, wall: dict) -> dict[str, str]:
    """{run folder name: commit} for runs from before metrics.json named its commit (``ablate.collect``
    reads that): this script's calls record theirs, and the prepared set's members get the ssl_gain
    calls' commit when all had one."""
    known = {name: c["commit"] for c in wall["calls"] for name in c.get("runs", [])}
    ssl = {c.get("commit") for c in _read(runs / SSL_GAIN_WALL, {"calls": []})["calls"]}
    if len(ssl) == 1 and None not in ssl:
        members = {ablate.run_name(variant, frac, 0).rsplit("seed", 1)[0] for _, variant, frac in prepared.MEMBERS}
        for path in runs.iterdir() if runs.is_dir() else []:
            if path.name.rsplit("seed", 1)[0] in members:
                known.setdefault(path.name, next(iter(ssl)))
    return known


def md_table(df) -> str:
    """A DataFrame as a markdown table (index included; floats with 2 decimals)."""
    df = df.reset_index() if df.index.name or any(df.index.names) else df
    cell = lambda v: ("–" if v != v else f"{v:.2f}") if isinstance(v, float) else str(v)  # noqa: E731  (NaN: –)
    rows = [" | ".join(map(str, df.columns)), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(cell(v) for v in r) for r in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def grid_table(runs: Path, variants, seeds, wall: dict):
    """The finished runs of the grid (variants x 1/16 x seeds) in ``runs``, with their commit."""
    table = ablate.collect(runs)
    table = table[table["variant"].isin(variants) & table["seed"].isin(seeds) & (table["labeled"] == prepared.LABELED)]
    by = trained_by(runs, wall)
    commit = table["commit"].where(table["commit"] != "unknown", table["run"].map(lambda r: by.get(r, "unknown")))
    return table.assign(commit=commit)[COLUMNS].reset_index(drop=True)


def kept_rows(results_csv: Path, local, seeds, planned: str | None = None):
    """The rows of the committed table (``results_csv``) of ``seeds`` whose runs ``local`` lacks, of
    every variant: a call that adds one variant extends the committed grid, never shrinks it to that
    variant. ``planned``: the backbone the runs still to train will start from (checked like local's)."""
    if not results_csv.exists():
        return local.iloc[:0]
    old = pd.read_csv(results_csv, dtype={"labeled": str, "commit": str, "backbone": str})
    if "backbone" not in old.columns:  # a table from before runs recorded their backbone
        old.insert(len(old.columns) - 2, "backbone", "unknown")
    if list(old.columns) != COLUMNS:
        raise KitError(f"{results_csv}: expected the columns {', '.join(COLUMNS)}; move it away or pass --fresh")
    keep = old["seed"].isin(seeds) & (old["labeled"] == prepared.LABELED)
    kept = old[keep & ~old["run"].isin(set(local["run"]))]
    # Runs paired by seed share their init only when they start from the same backbone weights, and
    # the same pretraining gives other weights on another CPU: never mix backbones in one table.
    here = set(local["backbone"]) | ({planned} if planned else set())
    if len(kept) and here and (len(set(kept["backbone"]) | here) > 1 or "unknown" in here | set(kept["backbone"])):
        raise KitError(f"{results_csv}: its runs started from backbone(s) {', '.join(sorted(set(kept['backbone'])))}, "
                       f"the runs here from {', '.join(sorted(here))}; runs paired by seed must share their init, "
                       f"so tabulate these alone (--fresh, or another --results or --name)")
    return kept


def wall_calls(runs: Path, wall: dict, previous: dict | None) -> list[dict]:
    """The calls that trained the table's runs: this folder's (ablation and ssl_gain calls) and, when
    committed rows are kept, those the committed JSON lists (its total, for a JSON from before calls
    were listed). Each call once, so re-running the script never counts one twice."""
    calls = [{"source": "ablation.py", **c} for c in wall["calls"]]
    calls += [{"source": "ssl_gain.py", **c} for c in _read(runs / SSL_GAIN_WALL, {"calls": []})["calls"]]
    if previous:
        earlier = previous.get("wall_calls") or [{"source": "committed table", "seconds": previous["wall_seconds"],
                                                  "commits": previous["commits"]}]
        seen = {json.dumps(c, sort_keys=True) for c in calls}
        calls += [c for c in earlier if json.dumps(c, sort_keys=True) not in seen]
    return calls


def wall_seconds(calls: list[dict]) -> float:
    """Wall time of the calls that trained a table's runs. Calls that ran at the same time (two
    processes on one machine) count once where they record when they ``started`` (epoch seconds);
    the others add their own seconds."""
    total = sum(c["seconds"] for c in calls if "started" not in c)
    end = float("-inf")
    for start, stop in sorted((c["started"], c["started"] + c["seconds"]) for c in calls if "started" in c):
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total


def markdown(table, meta: dict, results: Path = HERE / "results") -> str:
    lines = [f"# ablation ({meta['preset']} preset, 1/16 labeled)", "", ablate.provenance(meta), ""]
    if table.empty:
        return "\n".join(lines + ["no finished runs yet"])
    # verdicts only against a noise table of this very recipe and backbone; the older grids have none
    floor = ablate.grid_noise_table(table, meta, results)
    lines += [ablate.grid_status(table, meta), "",
              f"Verdicts against the [noise table](noise-{floor.preset}.md) of the same recipe and backbone."
              if floor else "No noise table was measured for this recipe and backbone: differences are shown, "
                            "not judged.", ""]
    lines += ["## Findings", "", *(f"- {x}" for x in [*ablate.ingredient_findings(table, floor, meta["variants"]),
                                                        ablate.cpcl_vs_cps(table, floor),
                                                        *ablate.method_findings(table, floor),
                                                        *ablate.strength_findings(table, floor, meta["variants"])]), ""]
    lines += ["## mIoU per variant (net 1), mean ± sd over seeds", "", md_table(ablate.summarise(table)), ""]
    for base in ("cpcl", "cps"):
        p = ablate.paired(table, base, noise_table=floor)
        if not p.empty:
            lines += [f"## Each variant minus {base}, paired by seed (mIoU points, paired 95 % interval)", "",
                      md_table(p), ""]
    means = 100 * table.groupby("variant", sort=False)[["miou", "digit_miou", "miou_net2", "miou_ensemble"]].mean()
    lines += ["## Digit-only, net 2 and the ensemble (mean over seeds, %)", "", md_table(means.round(2)), ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="benchmark")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", help="comma-separated (default: ablate.PRESET_GRID_VARIANTS; with --recipe "
                                      "cutmix ablate.COMMITTED_VARIANTS, the older grids')")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--runs", type=Path, help="run folder (default: ~/.cache/cpcl-kit/ablation/<preset>)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (worker processes)")
    p.add_argument("--collect-only", action="store_true", help="tabulate the finished runs, train nothing")
    p.add_argument("--fresh", action="store_true",
                   help="tabulate the run folder alone (default: keep the committed rows whose runs it lacks)")
    p.add_argument("--name", help="the results' file stem (default ablation-<preset>-preset; with --recipe cutmix "
                                  "ablation-<preset>): a second grid beside it")
    p.add_argument("--recipe", choices=("preset", "cutmix"), default="preset",
                   help="preset: the preset as it is (today's recipe); cutmix: the older grids' RECIPE on top")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    runs = args.runs or default_runs(args.preset)
    overrides = parse_sets([*(RECIPE if args.recipe == "cutmix" else []), *args.sets])
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants or ",".join(ablate.PRESET_GRID_VARIANTS if args.recipe == "preset"
                                         else ablate.COMMITTED_VARIANTS)
    grid = ablate.normalise_grid({"variants": variants, "fractions": [prepared.LABELED], "seeds": seeds})
    started_at = commit()  # the code that trains; a later commit during a long grid does not count
    command = command_line(__file__, argv)
    # the older grids keep their names; today's recipe writes beside them, never into them
    name = args.name or f"ablation-{args.preset}" + ("-preset" if args.recipe == "preset" else "")
    previous = None if args.fresh else _read(args.results / f"{name}.json", None)
    if previous is not None and previous.get("sets", []) != args.sets:
        raise KitError(f"{args.results / name}.json: its runs were trained with --set {previous.get('sets', [])}, "
                       f"this call has --set {args.sets}; pass another --results, or --fresh")
    if previous is not None and previous.get("recipe", "cutmix") != args.recipe:
        raise KitError(f"{args.results / name}.json: its runs were trained with --recipe "
                       f"{previous.get('recipe', 'cutmix')}, this call has --recipe {args.recipe}; pass another --name")
    wall = _read(runs / WALL, {"seconds": 0.0, "calls": []})
    if not args.collect_only:
        local = grid_table(runs, grid["variants"], seeds, wall)
        held = set()
        if not args.fresh:  # the backbone the runs to train start from must be the committed rows'
            first = ablate.run_config(grid["variants"][0], prepared.LABELED, seeds[0], args.preset, overrides)
            planned = pretrain.fingerprint(first).get("sha256", "unknown")  # pretrains now when not cached
            held = set(kept_rows(args.results / f"{name}.csv", local, seeds, planned)["run"])
        if held and not args.quiet:
            print(f"{len(held)} runs of the committed table are kept, not retrained (--fresh retrains them)")
        cells = [{"variants": [v], "fractions": [prepared.LABELED], "seeds": [s]} for v in grid["variants"]
                 for s in seeds if ablate.run_name(v, prepared.LABELED, s) not in held]
        t0, started = time.perf_counter(), time.time()
        try:
            if cells:
                ablate.run_grid(cells, runs, preset=args.preset, overrides=overrides,
                                progress=not args.quiet, jobs=args.jobs)
        finally:  # also when stopped (Ctrl-C): the runs it finished keep their record
            new = sorted(set(grid_table(runs, grid["variants"], seeds, wall)["run"]) - set(local["run"]))
            if new:  # this call trained runs: its wall time counts towards the grid's
                seconds = time.perf_counter() - t0
                wall = _read(runs / WALL, wall)  # as it is now: another call may have ended meanwhile
                wall["seconds"] += seconds
                wall["calls"].append({"seconds": round(seconds, 1), "started": round(started, 1),
                                      "runs_trained": len(new), "jobs": args.jobs, "commit": started_at,
                                      "command": command, "runs": new, "cpu": machine()})
                write_json(runs / WALL, wall)
    table = grid_table(runs, grid["variants"], seeds, wall)
    kept = table.iloc[:0] if args.fresh else kept_rows(args.results / f"{name}.csv", table, seeds)
    table = ablate.sort_rows(pd.concat([table, kept], ignore_index=True)) if len(kept) else table
    calls = wall_calls(runs, wall, previous if len(kept) else None)
    variants = list(dict.fromkeys([*kept["variant"], *grid["variants"]]))  # the committed ones first
    meta = {"preset": args.preset, "labeled": prepared.LABELED, "seeds": seeds, "variants": variants,
            "runs_finished": len(table), "runs_expected": len(variants) * len(seeds),
            # the checkout that wrote these tables, and the commits that trained their runs
            "commit": started_at, "commits": sorted(set(table["commit"])) or [started_at],
            "command": command, "sets": args.sets,  # this call's; each training call's is in wall_calls
            "recipe": args.recipe,  # and the settings CPCL trained with, which every variant changes
            "config": ablate.run_config("cpcl", prepared.LABELED, seeds[0], args.preset, overrides).to_dict(),
            "runs_kept": len(kept),  # rows of the committed table whose runs this run folder lacks
            # the calls that trained the runs (this script's, the ssl_gain calls that trained the shared
            # runs, and those of the kept rows) and their sum
            "wall_seconds": round(wall_seconds(calls), 1) or None, "wall_calls": calls,
            # the machines that trained them, where the calls recorded it
            "cpus": sorted({c["cpu"] for c in calls if c.get("cpu")}),
            "run_seconds_total": round(float(table["seconds"].sum()), 1)}
    write_csv(args.results / f"{name}.csv", table)
    write_json(args.results / f"{name}.json", meta)
    text = markdown(table, meta, args.results)
    write_text(args.results / f"{name}.md", text + "\n")
    print(text)
    if meta["runs_finished"] < meta["runs_expected"]:
        print(f"\nonly {meta['runs_finished']} of {meta['runs_expected']} runs finished so far")
    print(f"\nwritten: {args.results / name}.csv, .json, .md")
    return meta


if __name__ == "__main__":
    try:
        main()
    except KitError as e:  # one line naming the argument or file, exit 2 (as the kit's CLI)
        print(f"ablation.py: {e}", file=sys.stderr)
        sys.exit(2)
