"""Run the kit's notebooks headlessly with papermill (used by `make demo` and the tests)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import KitError

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def use_this_python_as_kernel() -> str:
    """Make the Jupyter kernel ``python3`` mean this interpreter, whatever the user's own kernels say.

    A kernelspec in a fresh folder put first on JUPYTER_PATH wins over user and system ones, so a
    stale ``~/.local/share/jupyter/kernels/python3`` cannot send papermill to another Python.
    """
    root = Path(tempfile.mkdtemp(prefix="cpcl-kernel-"))
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (cpcl-kit)", "language": "python",
        "metadata": {"debugger": True},
    }))
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root), os.environ.get("JUPYTER_PATH", "")])
    return "python3"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list}


def check_parameters(path: Path, parameters: dict) -> None:
    """Refuse unknown parameter names and values whose type differs from the default's, naming them."""
    import papermill as pm

    declared = pm.inspect_notebook(str(path))
    for name, value in parameters.items():
        if name not in declared:
            raise KitError(f"{Path(path).name}: unknown parameter '{name}'; "
                           f"its parameters are {', '.join(declared)}")
        default = ast.literal_eval(declared[name]["default"]) if declared[name]["default"] else None
        if value is None:
            continue
        annotated = [_TYPES[t.strip()] for t in declared[name]["inferred_type_name"].split("|")
                     if t.strip() in _TYPES]  # e.g. "image_size: int | None = None"
        if annotated:
            if not isinstance(value, tuple(annotated)) or (isinstance(value, bool) and bool not in annotated):
                raise KitError(f"{Path(path).name}: parameter {name} expected "
                               f"{declared[name]['inferred_type_name']}, got {value!r} ({type(value).__name__})")
            continue
        if default is None:
            continue
        ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
        if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            ok = True
        if not ok or (isinstance(value, bool) and not isinstance(default, bool)):
            raise KitError(f"{Path(path).name}: parameter {name} expected {type(default).__name__}, "
                           f"got {value!r} ({type(value).__name__})")


def run_notebook(path: Path, out_path: Path, parameters: dict | None = None,
                 cwd: Path | None = None, timeout: int = 1800) -> float:
    """Execute one notebook into ``out_path`` with papermill; returns seconds taken.

    Parameters are checked against the notebook's ``parameters`` cell first. A cell that fails with
    a KitError (bad input) raises that one line as a KitError; any other failure raises
    ``RuntimeError`` with the cell's error and the end of its traceback.
    """
    import papermill as pm

    check_parameters(path, parameters or {})
    kernel = use_this_python_as_kernel()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(path), str(out_path), parameters=parameters or {},
                            kernel_name=kernel, cwd=str(cwd or Path(path).parent),
                            progress_bar=False, execution_timeout=timeout)
    except pm.PapermillExecutionError as e:
        if e.ename in ("KitError", "TrainingDiverged"):
            raise KitError(f"{Path(path).name}: {_ANSI.sub('', e.evalue)}") from None
        raise RuntimeError(f"{Path(path).name}: cell {e.exec_count} failed: {e.ename}: {e.evalue}\n"
                           + _ANSI.sub("", "".join(e.traceback[-3:]))) from None
    return time.perf_counter() - t0


def to_html(ipynb: Path) -> Path:
    """Convert an executed notebook to HTML beside it."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(ipynb), as_version=4))
    from .runs import write_text

    return write_text(Path(ipynb).with_suffix(".html"), body)


def demo_parameters(nb: Path, preset: str, out: Path) -> dict:
    """What ``make demo`` passes a notebook: the preset and output folder, and ``interactive=False``
    where a notebook has that parameter. Headless, widgets have nobody to move them, the executed
    HTML shows the static figure instead, and papermill was seen to hang now and then waiting for
    an interactive output of notebook 08 (the browser test checks the widgets)."""
    import papermill as pm

    params = {"preset": preset, "out_dir": str(out)}
    if "interactive" in pm.inspect_notebook(str(nb)):
        params["interactive"] = False
    return params


# What a notebook reuses from an earlier one in the same output folder: the supervised run that 03
# trains, the CPCL run that 04 trains. With ``jobs > 1`` a notebook starts only once these are done,
# so no two kernels train the same run. tests/test_notebooks.py checks this map against the code.
DEMO_NEEDS: dict[str, tuple[str, ...]] = {"05": ("04",), "06": ("03", "04"), "08": ("04",)}
# The notebooks that train the long runs start first; the short ones fill the other slots meanwhile.
DEMO_FIRST = ("04", "03")


def demo_ready(pending: list[str], running: list[str], needs: dict = DEMO_NEEDS) -> list[str]:
    """The pending notebooks (number prefixes, in order) that may start: none of what they need is
    pending or running."""
    busy = set(pending) | set(running)
    return [nb for nb in pending if not busy & set(needs.get(nb, ()))]


def _demo_one(nb: Path, out: Path, preset: str) -> dict:
    """Execute one notebook for ``run_demo`` and convert it to HTML; its row of the timing table."""
    target = out / "notebooks" / nb.name
    secs = run_notebook(nb, target, demo_parameters(nb, preset, out), cwd=out)
    to_html(target)
    return {"notebook": nb.name, "seconds": round(secs, 1)}


def _one_thread_kernels() -> None:
    # The kernels this worker starts inherit its environment: one torch thread each, as the
    # benchmark grids train (two one-thread runs make about 1.3-1.7x the steps of one two-thread run).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def run_demo(out: Path, preset: str = "demo", only: list[str] | None = None, jobs: int = 1) -> list[dict]:
    """Execute every tutorial notebook with ``preset``; write them, HTML and figures under ``out``.

    ``jobs=1`` runs them one after another in number order. ``jobs=N`` runs up to N at once, each
    kernel with one torch thread, each started once what it needs (``DEMO_NEEDS``) has finished."""
    if jobs < 1:
        raise KitError(f"--jobs: expected at least 1, got {jobs}")
    if not notebooks():
        raise KitError(f"demo: no tutorial notebooks in {NOTEBOOK_DIR}; they come with the kit's git checkout "
                       f"(notebooks/), not with an installed package: run make demo there")
    out = Path(out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "notebooks").mkdir(exist_ok=True)
        (out / "figures").mkdir(exist_ok=True)
    except OSError as e:
        raise KitError(f"--out: cannot write to {out} ({e.strerror})") from None
    chosen = {nb.name[:2]: nb for nb in notebooks() if not only or any(nb.name.startswith(o) for o in only)}
    rows = _run_in_order(chosen, out, preset, jobs)
    figures = sorted((out / "figures").glob("*.png"))
    print(f"\nExecuted notebooks and HTML: {out / 'notebooks'}\nFigures ({len(figures)}): {out / 'figures'}")
    shutil.rmtree(out / "notebooks" / ".ipynb_checkpoints", ignore_errors=True)
    from . import prepared

    if preset in prepared.SHOWN_FOR:
        found = prepared.find(prepared.PRESET)
        print(f"Notebooks 04-08 showed the prepared run set in {prepared.default_dir()}" if found else
              f"Notebooks 04-08 showed the live runs; {prepared.how_to_make()}")
    return rows


def _run_in_order(chosen: dict[str, Path], out: Path, preset: str, jobs: int) -> list[dict]:
    def started(key):
        print(f"running {chosen[key].name} (preset {preset}) ...", flush=True)

    def finished(row):
        print(f"  done in {row['seconds']:.0f} s -> {out / 'notebooks' / row['notebook']}", flush=True)
        return row

    if jobs == 1:
        rows = []
        for key in chosen:
            started(key)
            rows.append(finished(_demo_one(chosen[key], out, preset)))
        return rows
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    pending = [k for k in DEMO_FIRST if k in chosen] + [k for k in chosen if k not in DEMO_FIRST]
    running, rows, failed = {}, [], None
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_one_thread_kernels) as pool:
        while (pending and failed is None) or running:
            for key in demo_ready(pending, list(running.values()))[: jobs - len(running)]:
                if failed is None:
                    pending.remove(key)
                    started(key)
                    running[pool.submit(_demo_one, chosen[key], out, preset)] = key
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                try:
                    rows.append(finished(future.result()))
                except Exception as e:  # noqa: BLE001 - reported now, raised once the others end
                    print(f"  {chosen[key].name} failed; waiting for the notebooks still running", flush=True)
                    failed = failed or e
    if failed is not None:
        raise failed
    return rows


# ------------------------------------------------------------------------------------------------
# what every notebook's first cell calls


def notebook_config(preset: str, data_root: str | None = None, allow_cpu: bool = False,
                    needs: str = "run", **fields):
    """The Config a notebook works with, under one rule for every notebook:

    * a CPU preset (smoke, demo, benchmark) trains on the embedded digit scenes; ``data_root`` is
      refused there (it belongs to the paper presets);
    * a paper preset (voc, cityscapes) runs the paper experiment when ``data_root`` names the data
      set and a GPU is here (or ``allow_cpu=True`` says to train on the CPU anyway); otherwise one
      KitError line says what to pass. Never a silent switch to another preset.

    ``needs``: "run" (the notebook trains or loads a run: the rule above), "model" (it only builds a
    net: any preset, no data), "digits" (it shows the embedded scenes: CPU presets only).
    ``fields``: config fields on top of the preset (e.g. method, labeled, seed)."""
    from .config import make_config

    if needs not in ("run", "model", "digits"):
        raise KitError(f"needs: expected run, model or digits, got {needs!r}")
    cfg = make_config(preset, {**fields, **({"data_root": data_root} if data_root else {})})
    if cfg.dataset == "digits":
        if data_root:
            raise KitError(f"data_root: preset {preset!r} trains on the embedded digit scenes; data_root is "
                           f"for the paper presets (voc, cityscapes)")
        return cfg
    if needs == "digits":
        raise KitError(f"preset {preset!r}: this notebook shows the embedded digit scenes; use a CPU preset "
                       f"(smoke, demo, benchmark)")
    if needs == "run":
        if not data_root:
            raise KitError(f"preset {preset!r} is the paper experiment on {cfg.dataset}: pass data_root=<the "
                           f"{cfg.dataset} folder> (nothing is downloaded), or use a CPU preset (smoke, demo, "
                           f"benchmark) for the embedded digit scenes")
        import torch

        if not torch.cuda.is_available() and not allow_cpu:
            raise KitError(f"preset {preset!r} is a GPU experiment ({cfg.backbone}, {cfg.crop} px crops, "
                           f"{cfg.iterations} iterations) and no CUDA device is here: run it on a GPU, or pass "
                           f"allow_cpu=True to train on the CPU anyway (days)")
    return cfg


# Notebook 08's default: the best run at hand for a lecture, never the smoke run unless asked.
BEST = "best"
BEST_FALLBACK = "demo"


def open_shared_run(preset: str, out_dir, seed: int = 0, data_root: str | None = None,
                    allow_cpu: bool = False, progress: bool = True, use_prepared: bool = True):
    """The CPCL run that notebooks 04–08 share and its data: ``(cfg, run, data)``.

    ``preset="best"`` (notebook 08's default): the prepared run set's CPCL run when it is here, else
    the ``demo`` preset's run (trained with a progress bar when it is not there yet).

    With ``use_prepared`` and a CPU preset that shows it (``prepared.SHOWN_FOR``: demo, benchmark),
    the prepared run set's CPCL run for ``seed`` when it is there (``prepared.find``): trained once
    on the benchmark preset. Otherwise the live run of ``preset``, trained by
    the first notebook that asks, then reused. Prints which one it is and net 1's mIoU."""
    from . import prepared
    from .analysis import shared_run
    from .data import build_data

    if preset == BEST:
        print(f"preset {BEST!r}: the prepared run set's CPCL run if it is here, else the {BEST_FALLBACK!r} run")
        preset, use_prepared = BEST_FALLBACK, True
    cfg = notebook_config(preset, data_root, allow_cpu, method="cpcl", seed=seed)
    found = prepared.find(prepared.PRESET, seed) if use_prepared and preset in prepared.SHOWN_FOR else None
    if found:
        run = prepared.load({"cpcl": found["cpcl"]})["cpcl"]
        cfg, data = run.config, build_data(run.config)
        print(f"the prepared run set's CPCL run ({cfg.preset} preset, {cfg.iterations} iterations; "
              f"python -m cpcl_kit prepare) in {run.out_dir}")
    else:
        data = build_data(cfg)
        run = shared_run(cfg, out_dir, progress=progress, data=data)
        print(f"CPCL run ({cfg.preset}, seed {cfg.seed}, {cfg.iterations} iterations, labeled {cfg.labeled}) in "
              f"{run.out_dir}")
        if use_prepared and preset in prepared.SHOWN_FOR:
            print(prepared.how_to_make(seed=seed))
    print(f"mIoU of net 1 on the validation scenes: {100 * run.metrics['miou']:.1f} %")
    return cfg, run, data
