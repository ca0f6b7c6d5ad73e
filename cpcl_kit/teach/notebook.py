"""What a notebook's first cells call: its ``Config`` under one rule for every notebook, and the
shared CPCL run (live or prepared) that notebooks 04-08 show."""

from __future__ import annotations

from ..errors import KitError

def notebook_config(preset: str, data_root: str | None = None, allow_cpu: bool = False,
                    needs: str = "run", dataset: str | None = None, **fields):
    """The Config a notebook works with, under one rule for every notebook:

    * a CPU preset (smoke, demo, benchmark) trains on the embedded digit scenes, or with
      ``dataset="folder"`` and ``data_root`` on a folder of your own (images/, masks/, classes.txt),
      on the CPU;
    * a paper preset (voc, cityscapes) runs the paper experiment when ``data_root`` names the data
      set and a GPU is here (or ``allow_cpu=True`` says to train on the CPU anyway); otherwise one
      KitError line says what to pass. Never a silent switch to another preset.

    ``needs``: "run" (the notebook trains or loads a run: the rule above), "model" (it only builds a
    net: any preset, no data), "digits" (it shows the embedded scenes: CPU presets only).
    ``dataset``: None keeps the preset's. ``fields``: config fields on top of the preset (e.g.
    method, labeled, seed)."""
    from .. import registry
    from ..config import make_config
    from ..constants import PAPER_PRESETS

    if needs not in ("run", "model", "digits"):
        raise KitError(f"needs: expected run, model or digits, got {needs!r}")
    one_line_warnings()
    given = {**fields, **({"data_root": data_root} if data_root else {}), **({"dataset": dataset} if dataset else {})}
    cfg = make_config(preset, given)
    entry = registry.dataset(cfg.dataset)
    if entry.generated:
        if data_root:
            raise KitError(f"data_root: preset {preset!r} trains on the embedded digit scenes; data_root is "
                           f"for a paper preset (voc, cityscapes) or for dataset='folder' (your own data)")
        return cfg
    if needs == "digits":
        raise KitError(f"preset {preset!r}: this notebook shows the embedded digit scenes; use a CPU preset "
                       f"(smoke, demo, benchmark) without dataset")
    if needs == "run":
        if not data_root:
            if cfg.preset not in PAPER_PRESETS:
                raise KitError(f"data_root: dataset {cfg.dataset!r} trains on files of your own; pass "
                               f"data_root=<their folder> ({entry.about})")
            raise KitError(f"preset {preset!r} is the paper experiment on {cfg.dataset}: pass data_root=<the "
                           f"{cfg.dataset} folder> (nothing is downloaded), or use a CPU preset (smoke, demo, "
                           f"benchmark) for the embedded digit scenes")
        import torch

        if cfg.preset in PAPER_PRESETS and not torch.cuda.is_available() and not allow_cpu:
            raise KitError(f"preset {preset!r} is a GPU experiment ({cfg.backbone}, {cfg.crop} px crops, "
                           f"{cfg.iterations} iterations) and no CUDA device is here: run it on a GPU, or pass "
                           f"allow_cpu=True to train on the CPU anyway (days)")
    return cfg


def one_line_warnings() -> None:
    """Show the kit's own warnings in this kernel as one line each, as the command line does.
    Python's format heads a warning with the kit's source file and line: a path on the machine that
    ran the notebook, which tells its reader nothing. Other warnings keep their format."""
    import warnings

    plain = warnings.formatwarning
    if getattr(plain, "kit_lines", False):
        return

    def line(message, category, filename, lineno, source=None):
        if category.__module__.split(".")[0] == "cpcl_kit":
            return f"warning: {' '.join(str(message).split())}\n"
        return plain(message, category, filename, lineno, source)

    line.kit_lines = True
    warnings.formatwarning = line


def minutes_estimate(cfg) -> str:
    """About how long a run of ``cfg`` trains, from the committed benchmark
    (``benchmarks/results/ssl_gain-*.json``: seconds per run of each method), scaled by iterations;
    words, not a number, where nothing comparable was measured (another data set or method)."""
    from ..config import make_config
    from ..experiments import prepared

    summary = prepared.committed()
    measured = (summary or {}).get(cfg.method)
    if not measured or not measured.get("seconds") or cfg.dataset != make_config(summary["preset"]).dataset:
        return "no measured time for this data set and method"
    per_iteration = sum(measured["seconds"]) / len(measured["seconds"]) / make_config(summary["preset"]).iterations
    seconds = per_iteration * cfg.iterations
    took = "under a minute" if seconds < 60 else f"about {round(seconds / 60)} min"
    return (f"{took} (scaled from the committed {cfg.method} runs in benchmarks/results/"
            f"{prepared.COMMITTED.name}, trained two at a time on two cores; machines differ)")


def plan(out_dir, *cfgs) -> None:
    """Print what the cells below will train, and about how long each run takes, or that they reuse a
    finished run: a notebook opened alone says first what it is going to do."""
    from ..engine import runs
    from ..files import shown_path

    for cfg in cfgs:
        folder = runs.notebook_run_dir(out_dir, cfg)
        init = ", backbone from random init" if cfg.backbone_weights in ("none", None) else ""
        what = f"{cfg.method} on the {cfg.preset} preset ({cfg.iterations} iterations, seed {cfg.seed}{init})"
        if runs.is_finished(folder):
            print(f"reuses the finished run of {what} in {shown_path(folder)}")
        else:
            print(f"trains {what}: {minutes_estimate(cfg)}; a bar shows its progress")


# Notebook 08's default: the best run at hand for a lecture, never the smoke run unless asked.
BEST = "best"
BEST_FALLBACK = "demo"


def open_shared_run(preset: str, out_dir, seed: int = 0, data_root: str | None = None,
                    allow_cpu: bool = False, progress: bool = True, use_prepared: bool = True,
                    dataset: str | None = None):
    """The CPCL run that notebooks 04–08 share and its data: ``(cfg, run, data)``.

    ``preset="best"`` (notebook 08's default): the prepared run set's CPCL run when it is here, else
    the ``demo`` preset's run (trained with a progress bar when it is not there yet).

    With ``use_prepared`` and a CPU preset that shows it (``prepared.SHOWN_FOR``: demo, benchmark),
    the prepared run set's CPCL run for ``seed`` when it is there (``prepared.find``): trained once
    on the benchmark preset. Otherwise the live run of ``preset``, trained by
    the first notebook that asks, then reused. Prints which one it is and net 1's mIoU."""
    from ..data.build import build_data
    from ..experiments import prepared
    from ..files import shown_path
    from .analysis import shared_run

    if preset == BEST:
        print(f"preset {BEST!r}: the prepared run set's CPCL run if it is here, else the {BEST_FALLBACK!r} run")
        preset, use_prepared = BEST_FALLBACK, True
    cfg = notebook_config(preset, data_root, allow_cpu, method="cpcl", seed=seed, dataset=dataset)
    shows_prepared = use_prepared and preset in prepared.SHOWN_FOR and not cfg.data_root
    found = prepared.find(prepared.PRESET, seed) if shows_prepared else None
    if found:
        run = prepared.load({"cpcl": found["cpcl"]})["cpcl"]
        cfg, data = run.config, build_data(run.config)
        print(f"the prepared run set's CPCL run ({cfg.preset} preset, {cfg.iterations} iterations; "
              f"python -m cpcl_kit prepare) in {shown_path(run.out_dir)}")
    else:
        data = build_data(cfg)
        plan(out_dir, cfg)
        run = shared_run(cfg, out_dir, progress=progress, data=data)
        print(f"CPCL run ({cfg.preset}, seed {cfg.seed}, {cfg.iterations} iterations, labeled {cfg.labeled}) in "
              f"{shown_path(run.out_dir)}")
        if shows_prepared:
            print(prepared.how_to_make(seed=seed))
    print(f"mIoU of net 1 on the validation scenes: {100 * run.metrics['miou']:.1f} %")
    return cfg, run, data
