"""How much of a run's mIoU is the validation sample: finished runs evaluated on other validation sets.

    .venv/bin/python benchmarks/eval_noise.py --runs ~/.cache/cpcl-kit/noise/benchmark/threads1

Each finished supervised and CPCL run (net 1, as reported) of ``--runs`` is evaluated on ``--draws``
validation sets drawn with other seeds, of each size in ``--sizes``. The spread over the draws is the
part of the noise the evaluation adds, with the trained nets held fixed; the noise table
(``noise.py``) measures the whole. Writes ``benchmarks/results/eval_noise-<preset>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cpcl_kit.data.digits import DigitScenes  # noqa: E402
from cpcl_kit.data.transforms import val_transform  # noqa: E402
from cpcl_kit.engine import runs  # noqa: E402
from cpcl_kit.engine.evaluate import evaluate  # noqa: E402
from cpcl_kit.errors import KitError  # noqa: E402
from cpcl_kit.experiments import ablate  # noqa: E402
from cpcl_kit.files import machine, write_json, write_text  # noqa: E402
from cpcl_kit.provenance import code_version, command_line  # noqa: E402


def _md(df: pd.DataFrame) -> str:
    try:
        return df.to_markdown()
    except ImportError:  # tabulate missing (a machine without the kit's install): plain text
        return "```\n" + df.to_string() + "\n```"


def val_set(cfg, n: int, draw: int):
    """``n`` validation scenes of ``cfg``'s kind, drawn with a seed no run evaluates on."""
    from cpcl_kit.data import scene_spec

    return DigitScenes("val", n=n, spec=scene_spec(cfg), seed=50_000 + 1_000 * draw, transform=val_transform())


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="a folder of finished grid runs (with checkpoints)")
    p.add_argument("--sizes", default="300,1000")
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = ablate.collect(args.runs)
    table = table[table["variant"].isin(["supervised", "cpcl"]) & (table["labeled"] == "1/16")]
    rows = []
    for r in table.itertuples():
        run = runs.load_run(args.runs / r.run)
        net = run.nets[0].eval()
        for n in (int(s) for s in args.sizes.split(",")):
            for draw in range(args.draws):
                res = evaluate(net, val_set(run.config, n, draw), run.config.num_classes, progress=False)
                rows.append({"method": r.variant, "seed": int(r.seed), "scenes": n, "draw": draw, "miou": res["miou"]})
    df = pd.DataFrame(rows)
    if set(df.get("method", [])) != {"supervised", "cpcl"}:
        raise KitError(f"--runs {args.runs}: expected finished supervised and CPCL runs at 1/16 there")
    wide = df.pivot_table(index=["scenes", "draw", "seed"], columns="method", values="miou")
    diff = (100 * (wide["cpcl"] - wide["supervised"])).rename("diff").reset_index()
    summary = pd.concat([
        (100 * df.groupby(["scenes", "method", "seed"])["miou"].std()).groupby(["scenes", "method"]).mean()
        .unstack("method").add_prefix("sd of mIoU, "),
        diff.groupby(["scenes", "seed"])["diff"].std().groupby("scenes").mean().rename("sd of CPCL − supervised")],
        axis=1).round(2)
    preset = str(table["preset"].iloc[0]) if len(table) else "unknown"
    data = {"preset": preset, "commit": code_version()["commit"], "cpu": machine(),
            "command": command_line(__file__, argv),
            "runs": rows, "summary": summary.reset_index().to_dict("records")}
    path = args.results / f"eval_noise-{preset}.json"
    write_json(path, data)
    write_text(path.with_suffix(".md"), "\n\n".join([
        f"# Evaluation noise ({preset} preset)",
        f"`{data['command']}`, commit {data['commit']}, {data['cpu']}",
        f"Each finished run's net 1 on {args.draws} validation sets per size, drawn with seeds no run "
        "evaluates on. The sd over those draws (points, averaged over the runs' seeds) is what the "
        "validation sample alone adds; compare it with the float-order floor of the noise table.",
        _md(summary)]) + "\n")
    print(summary.to_string())
    return summary


if __name__ == "__main__":
    main()
