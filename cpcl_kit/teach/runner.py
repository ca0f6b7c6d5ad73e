"""Run the kit's notebooks headlessly with papermill (used by `make demo` and the tests); what a
notebook itself calls is in ``notebook``."""

from __future__ import annotations

import ast
import atexit
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..errors import KitError

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent.parent / "notebooks"


def notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def use_this_python_as_kernel() -> str:
    """Make the Jupyter kernel ``python3`` mean this interpreter, whatever the user's own kernels say.

    A kernelspec in a fresh folder put first on JUPYTER_PATH wins over user and system ones, so a
    stale ``~/.local/share/jupyter/kernels/python3`` cannot send papermill to another Python. One
    folder per process, removed when the process exits; made again if something removed it (a
    temporary-folder cleaner) or took it off JUPYTER_PATH.
    """
    global _KERNELSPEC_ROOT
    root = _KERNELSPEC_ROOT
    if root is None or not (root / "kernels" / "python3" / "kernel.json").is_file():
        root = _KERNELSPEC_ROOT = Path(tempfile.mkdtemp(prefix="cpcl-kernel-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        spec = root / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (cpcl-kit)", "language": "python",
            "metadata": {"debugger": True},
        }))
    paths = os.environ.get("JUPYTER_PATH", "")
    if paths.split(os.pathsep)[0] != str(root):
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root), paths])
    return "python3"


_KERNELSPEC_ROOT: Path | None = None


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
        with tempfile.TemporaryDirectory(prefix="cpcl-kernel-ipc-") as sockets:
            pm.execute_notebook(str(path), str(out_path), parameters=parameters or {},
                                kernel_name=kernel, cwd=str(cwd or Path(path).parent),
                                progress_bar=False, execution_timeout=timeout, config=_ipc_kernel(sockets))
    except pm.PapermillExecutionError as e:
        if e.ename in ("KitError", "TrainingDiverged"):
            raise KitError(f"{Path(path).name}: {_ANSI.sub('', e.evalue)}") from None
        raise RuntimeError(f"{Path(path).name}: cell {e.exec_count} failed: {e.ename}: {e.evalue}\n"
                           + _ANSI.sub("", "".join(e.traceback[-3:]))) from None
    return time.perf_counter() - t0


def _ipc_kernel(folder: str):
    """Kernel settings for a headless run: where the system has Unix sockets, the kernel talks to
    papermill over sockets in ``folder`` (private to this user), not over unencrypted localhost
    TCP, where any local user could listen, and about which the kernel prints a warning into make
    demo's output. Elsewhere (Windows, or a temporary folder whose path leaves no room for a socket's
    name) Jupyter's default, TCP."""
    from traitlets.config import Config

    if os.name != "posix":
        return Config()
    base = os.path.join(folder, "kernel")
    # A Unix socket's path has room for about 100 bytes (104 on macOS); the sockets are base-<port>.
    if len(base.encode()) + 8 > 100:
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": base}})


# nbconvert's page with its CDN MathJax swapped for an inline one. MathJax 3 ignores the
# MathJax 2 config the base template writes, so this sets the same TeX delimiters and numbering.
# require.js (also from a CDN) only serves the widgets renderer, which itself needs the network:
# kept where a notebook saved widget state, left out elsewhere.
_OFFLINE_MATH = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}
{%- if "widgets" in nb.metadata -%}{{ super() }}{%- endif -%}
{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}
<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\(', '\\)']],
  displayMath: [['$$', '$$'], ['\\[', '\\]']], processEscapes: true,
  processEnvironments: true, tags: 'ams'}};</script>
<script>{{ resources.mathjax_js }}</script>
{%- endblock html_head_js_mathjax -%}"""


def mathjax_js() -> str:
    """MathJax 3 as one script with every TeX package and its SVG fonts inside: inlined, the HTML
    shows its formulas offline (classrooms often are) and wherever the file is copied, and no
    macro is fetched from a CDN."""
    from importlib.resources import files

    try:
        js = files("mathjax").joinpath("static/mathjax/es5/tex-svg-full.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise KitError("to_html: no MathJax 3 found; pip install -c constraints.txt -e '.[test]'") from None
    return js.replace("</script", "<\\/script")  # so the page's parser cannot end the script early


def to_html(ipynb: Path) -> Path:
    """Convert an executed notebook to HTML beside it, its formulas rendered with no network."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(raw_template=_OFFLINE_MATH).from_notebook_node(
        nbformat.read(str(ipynb), as_version=4), resources={"mathjax_js": mathjax_js()})
    from ..files import write_text

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
# trains, the CPCL run that 04 trains (07 looks at its nets where no CPS run is at hand). With
# ``jobs > 1`` a notebook starts only once these are done, so no two kernels train the same run and
# none looks for a run still training. tests/test_notebooks.py checks this map against the code.
DEMO_NEEDS: dict[str, tuple[str, ...]] = {"05": ("04",), "06": ("03", "04"), "07": ("04",), "08": ("04",)}
# What make demo trains, each run once, where no prepared run set stands in for 04's CPCL run:
# (notebook, method, settings beside the demo preset's).
# benchmarks/speed.py (--sections demo) times this work; tests/test_notebooks.py checks it against
# the runs the notebooks leave.
DEMO_TRAINS: tuple[tuple[str, str, dict], ...] = (
    ("03", "supervised", {}), ("03", "supervised", {"backbone_weights": "none"}), ("04", "cpcl", {}))
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
    from ..experiments import prepared

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
