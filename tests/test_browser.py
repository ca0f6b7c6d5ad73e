"""The classroom notebook in a real browser: JupyterLab driven by headless Chromium (Playwright).

What a student does, automated: start ``jupyter lab`` on a copy of ``notebooks/``, open the notebook,
Run -> Run All Cells, wait for the kernel, then check that the ipywidgets controls render, that moving a
control re-draws the matplotlib figure, and that no cell shows an error. A screenshot is saved under
``out/browser/`` as evidence.

* Chromium is Debian's ``/usr/bin/chromium`` (``tests/browser_setup.sh`` installs it with apt-get when it
  is missing); Playwright never downloads a browser. If it cannot be installed the tests skip and say why.
* Everything is offline: JupyterLab's news feed, update check and PyPI extension manager are off, and
  the page may not request anything but the local server (checked).
* ``test_standin_notebook_in_lab`` always runs a small widget notebook written here, so the machinery is
  tested even before ``notebooks/08_classroom_demo.ipynb`` exists; ``test_classroom_demo_in_lab`` runs
  the real one (skipped until it is written).

Run only these with ``.venv/bin/python -m pytest -m browser -s``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from cpcl_kit.teach.runner import NOTEBOOK_DIR, use_this_python_as_kernel

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = Path(__file__).resolve().parent / "browser_setup.sh"
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "out" / "browser"
DEMO = "08_classroom_demo.ipynb"
DEFAULT_RUN = "08_default_run.ipynb"  # notebook 08 with its default parameters
STANDIN = "browser_standin.ipynb"
FIGURES = "01_data_and_splits.ipynb"  # a notebook of static figures: every one must render
BROKEN = "browser_broken.ipynb"

SERVER_START_TIMEOUT = 90     # s until JupyterLab answers /api/status
RUN_ALL_TIMEOUT = 240         # s for Run All Cells to finish (the demo may load a checkpoint / data)
REDRAW_TIMEOUT = 60           # s for a figure to change after a control moves

CHROMIUM_ARGS = ["--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps",
                 "--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio"]

# Selectors that fit any ipywidgets 8 slider / dropdown and any image output (inline PNG).
WIDGET = ".jp-OutputArea-output .jupyter-widgets"
SLIDER = ".widget-slider, .jupyter-widget-slider"
DROPDOWN = ".widget-dropdown select, .jupyter-widget-dropdown select"
IMAGES = ".jp-OutputArea-output img"
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


_T0 = time.perf_counter()     # reset when the module's JupyterLab fixture starts


def _say(capsys, msg: str) -> None:
    """Print past pytest's capture, so timings show up in a plain `make test` too."""
    with capsys.disabled():
        print(f"\n[browser] {msg} [{time.perf_counter() - _T0:.1f} s since browser setup began]",
              flush=True)


# --------------------------------------------------------------------------- Chromium

def _ensure_chromium() -> str | None:
    """Return None when /usr/bin/chromium is usable, else why not (after trying to install it)."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        try:
            r = subprocess.run(["sh", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"Chromium missing and {SETUP_SCRIPT.name} could not run: {e}"
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-5:])
            return f"Chromium missing and could not be installed ({SETUP_SCRIPT.name}):\n{tail}"
    try:
        r = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{CHROMIUM} does not run: {e}"
    if r.returncode != 0:
        return f"{CHROMIUM} --version failed: {r.stderr.strip()[-300:]}"
    return None


# --------------------------------------------------------------------------- JupyterLab

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_lab_settings(settings_dir: Path) -> None:
    """Fresh user settings: no news / update toasts, all cells kept in the DOM, no autosave."""
    files = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    }
    for rel, data in files.items():
        p = settings_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data))


def _descendants(pid: int) -> list:
    try:
        import psutil
        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


class Lab:
    """``jupyter lab`` from this venv in its own process group, on 127.0.0.1:<free port>, with a token."""

    def __init__(self, root_dir: Path, work: Path):
        self.root_dir, self.work = root_dir, work
        self.port = _free_port()
        self.token = uuid.uuid4().hex
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        t0 = time.perf_counter()
        use_this_python_as_kernel()            # kernel "python3" = sys.executable (via JUPYTER_PATH)
        env = dict(os.environ)
        env.update({
            "JUPYTER_CONFIG_DIR": str(self.work / "config"),     # ignore the user's jupyter config
            "JUPYTER_RUNTIME_DIR": str(self.work / "runtime"),
            "JUPYTER_DATA_DIR": str(self.work / "data"),         # notebook-signing key etc. stay here
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONUNBUFFERED": "1",
            # One compute thread per kernel: on 2 cores a kernel with two OpenMP threads competes with
            # JupyterLab and Chromium; spin-waiting threads made Run All several times slower.
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        })
        env.pop("JUPYTER_TOKEN", None)
        settings = self.work / "config" / "lab" / "user-settings"
        _write_lab_settings(settings)
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}", "--ServerApp.open_browser=False",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.work / 'workspaces'}",
        ]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.api("status"), timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"jupyter lab did not answer in {SERVER_START_TIMEOUT} s:\n{self.log_tail()}")

    def api(self, path: str) -> str:
        return f"{self.base}/api/{path}?token={self.token}"

    def url(self, notebook: str) -> str:
        """The notebook in a workspace of its own: the default workspace would re-open every notebook
        an earlier test opened, and their unexecuted cells would count as unfinished here."""
        return f"{self.base}/lab/workspaces/{uuid.uuid4().hex[:12]}/tree/{notebook}?token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Graceful shutdown (kernels too), then kill the process group and any kernel left over."""
        if self.proc is None:
            return
        kids = _descendants(self.proc.pid)   # kernels run in their own sessions: remember them now
        if self.proc.poll() is None:
            try:
                req = urllib.request.Request(self.api("shutdown"), method="POST", data=b"")
                urllib.request.urlopen(req, timeout=10).close()
                self.proc.wait(timeout=15)
            except Exception:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)     # stragglers in the group
        except (ProcessLookupError, PermissionError):
            pass
        for k in kids:
            try:
                k.kill()
            except Exception:
                pass
        self._log.close()


# --------------------------------------------------------------------------- notebooks

def _code_cell(src: str, tags: list[str] | None = None) -> dict:
    meta = {"tags": tags} if tags else {}
    return {"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8],
            "metadata": meta, "outputs": [], "source": src}


def write_standin(path: Path) -> None:
    """A small classroom-like notebook: IntSlider + Dropdown re-drawing a matplotlib figure."""
    cells = [
        {"cell_type": "markdown", "id": "intro", "metadata": {},
         "source": "# Stand-in for the classroom demo\nA slider and a dropdown re-draw a figure."},
        _code_cell('preset = "smoke"\nout_dir = "."\ninteractive = True', ["parameters"]),
        _code_cell("%matplotlib inline\nimport ipywidgets as widgets\nimport matplotlib.pyplot as plt\n"
                   "import numpy as np\nfrom IPython.display import display"),
        _code_cell(
            "def draw(scene, cmap):\n"
            "    rng = np.random.default_rng(scene)\n"
            "    fig, ax = plt.subplots(figsize=(3, 3))\n"
            "    ax.imshow(rng.random((16, 16)), cmap=cmap)\n"
            "    ax.set_title(f'scene {scene}, {cmap}')\n"
            "    ax.axis('off')\n"
            "    plt.show()\n\n"
            "scene = widgets.IntSlider(value=1, min=0, max=9, description='scene')\n"
            "cmap = widgets.Dropdown(options=['viridis', 'magma', 'gray'], value='viridis',\n"
            "                        description='colours')\n"
            "if interactive:\n"
            "    out = widgets.interactive_output(draw, {'scene': scene, 'cmap': cmap})\n"
            "    display(widgets.HBox([scene, cmap]), out)\n"
            "else:\n"
            "    draw(scene.value, cmap.value)"),
        _code_cell("import sys\nprint('kernel python:', sys.executable)"),
    ]
    _save_nb(path, cells)


def write_broken(path: Path) -> None:
    """A notebook that must trip check (3): a widget callback that raises, then a cell that raises."""
    cells = [
        _code_cell("%matplotlib inline\nimport ipywidgets as widgets\nimport matplotlib.pyplot as plt\n"
                   "from IPython.display import display"),
        _code_cell(
            "def draw(scene):\n"
            "    if scene != 1:\n"
            "        raise ValueError('deliberate callback error')\n"
            "    plt.plot([0, scene])\n"
            "    plt.show()\n\n"
            "scene = widgets.IntSlider(value=1, min=0, max=3, description='scene')\n"
            "display(scene, widgets.interactive_output(draw, {'scene': scene}))"),
        _code_cell("raise ValueError('deliberate cell error')"),
        _code_cell("print('never runs')"),
    ]
    _save_nb(path, cells)


def _save_nb(path: Path, cells: list[dict]) -> None:
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}}}
    path.write_text(json.dumps(nb, indent=1))


def inject_parameters(path: Path, values: dict) -> None:
    """Like papermill: add a cell after the ``parameters`` cell overriding the names it defines."""
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    for i, c in enumerate(cells):
        if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", []):
            src = "".join(c["source"])
            lines = [f"{k} = {v!r}" for k, v in values.items() if re.search(rf"^{k}\s*=", src, re.M)]
            if lines:
                cell = _code_cell("# injected by tests/test_browser.py\n" + "\n".join(lines),
                                  ["injected-parameters"])
                cells.insert(i + 1, cell)
                path.write_text(json.dumps(nb, indent=1))
            return


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab for the module, serving a temporary copy of notebooks/ plus the stand-in."""
    global _T0
    _T0 = time.perf_counter()
    for module in ("playwright", "jupyterlab"):  # the test extras; without them nothing to drive
        pytest.importorskip(module, reason=f"the browser test needs {module} (pip install -e '.[test]')")
    reason = _ensure_chromium()
    if reason:
        print(reason, flush=True)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("lab")
    root = work / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.html"))
    write_standin(root / STANDIN)
    write_broken(root / BROKEN)
    if (root / DEMO).exists():
        # the notebook's own default (the best run at hand), reading the runs make demo left in out/
        shutil.copy(root / DEMO, root / DEFAULT_RUN)
        inject_parameters(root / DEFAULT_RUN, {"out_dir": str(ROOT / "out")})
        # a quick classroom run: the small preset, outputs into the temp folder, widgets on
        inject_parameters(root / DEMO, {"preset": "smoke", "out_dir": str(work / "out"), "interactive": True})
    inject_parameters(root / FIGURES, {"preset": "smoke", "out_dir": str(work / "out")})
    server = Lab(root, work)
    try:
        server.started_in = server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    args = list(CHROMIUM_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    pw = sync_playwright().start()
    b = None
    try:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args, timeout=60_000)
        except Exception:
            if "--no-sandbox" in args:
                raise
            # not root, but a container without user namespaces: Chromium's sandbox cannot start
            b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, timeout=60_000,
                                   args=args + ["--no-sandbox"])
        yield b
    finally:
        try:
            if b is not None:
                b.close()
        finally:
            pw.stop()


# --------------------------------------------------------------------------- the browser session

class Session:
    """One notebook open in one page, with every request to anything but the local server refused."""

    def __init__(self, browser, lab: Lab):
        self.lab = lab
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.outside: list[str] = []
        self.console_errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.lab.base) or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def close(self):
        self.context.close()

    def open(self, notebook: str) -> None:
        p = self.page
        p.goto(self.lab.url(notebook), wait_until="domcontentloaded", timeout=90_000)
        p.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        self.wait_kernel_ready(notebook, 120)

    def kernel_status(self) -> str | None:
        return self.page.evaluate(
            "() => { const e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            " return e ? e.getAttribute('data-status') : null; }")

    def server_kernel(self, notebook: str) -> dict | None:
        """The notebook's kernel as the server sees it (execution_state, connections), or None."""
        try:
            with urllib.request.urlopen(self.lab.api("sessions"), timeout=5) as r:
                sessions = json.load(r)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        for sess in sessions:
            if Path(sess.get("path", "")).name == notebook and sess.get("kernel"):
                return sess["kernel"]
        return None

    def wait_kernel_ready(self, notebook: str, timeout: float) -> None:
        """Kernel started, connected to this page, idle (the page's indicator says 'idle' before that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            k = self.server_kernel(notebook)
            if k and k.get("execution_state") == "idle" and k.get("connections", 0) > 0 \
                    and self.kernel_status() == "idle":
                return
            self.page.wait_for_timeout(300)
        raise AssertionError(f"kernel for {notebook} not ready after {timeout} s "
                             f"(server: {self.server_kernel(notebook)}, page: {self.kernel_status()!r})\n"
                             f"server log:\n{self.lab.log_tail()}")

    def prompts(self) -> list[str]:
        return self.page.eval_on_selector_all(
            ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.textContent.trim())")

    def run_all(self) -> None:
        p = self.page

        def click_run_all():
            p.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            p.locator('.lm-Menu-item[data-command="runmenu:run-all"], '
                      '.lm-Menu-item[data-command="notebook:run-all-cells"]').first.click()

        click_run_all()
        # done = every code cell has an execution number and the kernel is idle again
        start = time.monotonic()
        deadline = start + RUN_ALL_TIMEOUT
        retried = False
        while time.monotonic() < deadline:
            if not retried and time.monotonic() - start > 20 \
                    and all(t in ("[ ]:", "") for t in self.prompts()):
                click_run_all()           # nothing started at all: the click was lost, try once more
                retried = True
            prompts = self.prompts()
            if prompts and all(re.fullmatch(r"\[\d+\]:", t) for t in prompts) \
                    and self.kernel_status() == "idle":
                return
            if self.errors():
                break                     # a cell failed: later cells stay unexecuted
            p.wait_for_timeout(300)
        raise AssertionError(f"Run All Cells did not finish: prompts {self.prompts()}\n"
                             f"errors: {self.errors()}")

    def errors(self) -> list[str]:
        """Text of every error output (tracebacks are rendered as stderr outputs in JupyterLab)."""
        texts = self.page.eval_on_selector_all(STDERR, "els => els.map(e => e.innerText)")
        return [t for t in texts if re.search(r"Traceback|Error\b|Exception\b", t)]

    def images(self) -> list[str]:
        return self.page.eval_on_selector_all(IMAGES, "els => els.map(e => e.getAttribute('src') || '')")

    def wait_images_change(self, before: list[str], timeout: float = REDRAW_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.images()
            if now and now != before and self.kernel_status() == "idle":
                return True
            self.page.wait_for_timeout(200)
        return False

    def move_slider(self, slider) -> str:
        """Move an ipywidgets slider one step (keyboard on the handle; typing in the readout as fallback)."""
        before = slider.locator(".widget-readout").inner_text().strip()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")
        self.page.wait_for_timeout(200)
        after = slider.locator(".widget-readout").inner_text().strip()
        if after == before:                                  # at the maximum, or keys not honoured
            handle.press("ArrowLeft")
            handle.press("ArrowLeft")
            self.page.wait_for_timeout(200)
            after = slider.locator(".widget-readout").inner_text().strip()
        if after == before:
            readout = slider.locator(".widget-readout")
            readout.click()
            self.page.keyboard.press("Control+A")
            try:
                target = str(int(before) + 1)
            except ValueError:
                target = before
            self.page.keyboard.type(target)
            self.page.keyboard.press("Enter")
            self.page.wait_for_timeout(200)
            after = slider.locator(".widget-readout").inner_text().strip()
        return f"slider {before} -> {after}"

    def choose_other(self, select) -> str:
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("e => e.selectedIndex")
        if len(options) < 2:
            return ""
        new = (current + 1) % len(options)
        select.select_option(index=new)
        return f"dropdown {options[current]!r} -> {options[new]!r}"


def drive_notebook(browser, lab: Lab, notebook: str, shot: Path, capsys, require_all: bool) -> None:
    t0 = time.perf_counter()
    s = Session(browser, lab)
    try:
        s.open(notebook)
        t_open = time.perf_counter() - t0
        s.run_all()
        t_run = time.perf_counter() - t0 - t_open
        errors = s.errors()
        assert not errors, f"{notebook}: a cell shows an error:\n" + "\n---\n".join(errors)[-3000:]
        kernel = s.server_kernel(notebook)
        assert kernel and kernel.get("name") == "python3", f"{notebook}: kernel {kernel}"
        if notebook == STANDIN:
            text = s.page.locator(".jp-Notebook").inner_text()
            assert f"kernel python: {sys.executable}" in text, \
                f"the kernel is not this venv's python ({sys.executable}):\n{text[-500:]}"

        # (1) the widgets render
        page = s.page
        page.wait_for_selector(WIDGET, timeout=30_000)
        sliders = page.locator(f".jp-OutputArea-output :is({SLIDER})")
        dropdowns = page.locator(f".jp-OutputArea-output :is({DROPDOWN})")
        n_sl, n_dd = sliders.count(), dropdowns.count()
        assert n_sl + n_dd > 0, f"{notebook}: no ipywidgets slider or dropdown rendered"
        if require_all:
            assert n_sl and n_dd, f"{notebook}: expected a slider and a dropdown, got {n_sl} / {n_dd}"
        page.wait_for_function(f"() => document.querySelectorAll({json.dumps(IMAGES)}).length > 0",
                               timeout=30_000)

        # (2) changing a control re-draws the figure
        changed, tried = [], []
        controls = [("slider", sliders.nth(i)) for i in range(n_sl)] + \
                   [("dropdown", dropdowns.nth(i)) for i in range(n_dd)]
        for kind, ctl in controls:
            if kind == "dropdown" and not ctl.is_enabled():
                continue
            before = s.images()
            ctl.scroll_into_view_if_needed()
            what = s.move_slider(ctl) if kind == "slider" else s.choose_other(ctl)
            if not what:
                continue
            ok = s.wait_images_change(before)
            tried.append(f"{what}: {'figure changed' if ok else 'figure unchanged'}")
            if ok:
                changed.append(what)
            if changed and not require_all:
                break
        assert changed, f"{notebook}: no control change re-drew the figure ({tried})"
        if require_all:
            assert len(changed) == len(controls), f"{notebook}: {tried}"

        # (3) still no error anywhere (widget callbacks print their tracebacks into Output widgets)
        errors = s.errors()
        assert not errors, f"{notebook}: error after moving a control:\n" + "\n---\n".join(errors)[-3000:]
        assert not s.outside, f"{notebook}: the page tried to reach the network: {s.outside[:5]}"

        shot.parent.mkdir(parents=True, exist_ok=True)
        page.locator(WIDGET).first.scroll_into_view_if_needed()
        page.screenshot(path=str(shot))
        total = time.perf_counter() - t0
        _say(capsys, f"{notebook}: JupyterLab up in {lab.started_in:.1f} s; open + kernel {t_open:.1f} s, "
                     f"run all {t_run:.1f} s, notebook total {total:.1f} s; {n_sl} slider(s), "
                     f"{n_dd} dropdown(s); {'; '.join(tried)}; screenshot {os.path.relpath(shot, ROOT)}")
    except Exception:
        try:
            shot.parent.mkdir(parents=True, exist_ok=True)
            s.page.screenshot(path=str(shot.with_name(shot.stem + "_FAILED.png")))
        except Exception:
            pass
        if s.console_errors:
            print("browser console errors:\n" + "\n".join(s.console_errors[-20:]))
        print("server log tail:\n" + lab.log_tail())
        raise
    finally:
        s.close()


# --------------------------------------------------------------------------- tests

def test_standin_notebook_in_lab(lab, browser, capsys):
    """The browser machinery itself, on a notebook written here (always runs when Chromium is there)."""
    drive_notebook(browser, lab, STANDIN, SHOTS / "standin.png", capsys, require_all=True)


def test_classroom_demo_in_lab(lab, browser, capsys):
    """notebooks/08_classroom_demo.ipynb: widgets render, a control re-draws the figure, no error."""
    if not (NOTEBOOK_DIR / DEMO).exists():
        pytest.skip(f"{DEMO} not written yet")
    drive_notebook(browser, lab, DEMO, SHOTS / "08_classroom_demo.png", capsys, require_all=False)


def _best_run_at_hand() -> str | None:
    """What notebook 08's default shows, if it is here without training: the prepared set's CPCL run,
    or the demo run that make demo trained into out/. None otherwise."""
    from cpcl_kit.engine import runs
    from cpcl_kit.experiments import prepared
    from cpcl_kit.teach.notebook import BEST_FALLBACK, notebook_config

    found = prepared.find(prepared.PRESET, 0)
    if found:
        return f"the prepared set ({found['cpcl']})"
    folder = runs.notebook_run_dir(ROOT / "out", notebook_config(BEST_FALLBACK, method="cpcl", seed=0))
    return f"the demo run ({folder})" if (folder / "metrics.json").exists() else None


def test_classroom_default_run_in_lab(lab, browser, capsys):
    """Notebook 08 as a lecturer opens it, default parameters: the best run at hand, never smoke. Run
    All would train the demo run (minutes) where none is here, so this test needs make prepared or make
    demo first; its screenshot is the lecture's first screen."""
    at_hand = _best_run_at_hand()
    if not at_hand:
        pytest.skip("no prepared set and no demo run in out/: make prepared or make demo first")
    _say(capsys, f"{DEFAULT_RUN}: showing {at_hand}")
    drive_notebook(browser, lab, DEFAULT_RUN, SHOTS / "08_default_run.png", capsys, require_all=True)


def test_every_figure_renders_in_lab(lab, browser, capsys):
    """Notebook 01 as a student runs it: Run All Cells, then as many images rendered in the page as
    the notebook shows figures (``plots.show`` calls), each drawn (a decoded, non-empty bitmap)."""
    code = [c for c in json.loads((NOTEBOOK_DIR / FIGURES).read_text())["cells"] if c["cell_type"] == "code"]
    shown = sum("".join(c["source"]).count("plots.show(") for c in code)
    t0 = time.perf_counter()
    s = Session(browser, lab)
    try:
        s.open(FIGURES)
        s.run_all()
        assert not s.errors(), s.errors()
        sizes = s.page.eval_on_selector_all(IMAGES, "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        drawn = [w for ok, w, h in sizes if ok and w > 100 and h > 100]
        assert len(drawn) >= shown, f"{FIGURES}: {shown} figures shown by the notebook, {len(drawn)} rendered: {sizes}"
        SHOTS.mkdir(parents=True, exist_ok=True)
        s.page.locator(IMAGES).nth(len(drawn) // 2).scroll_into_view_if_needed()  # a later figure
        s.page.screenshot(path=str(SHOTS / "01_figures.png"))
    finally:
        s.close()
    _say(capsys, f"{FIGURES}: {len(drawn)} images rendered for {shown} figures in {time.perf_counter() - t0:.1f} s")


def test_errors_are_detected(lab, browser, capsys):
    """Check (3) is not vacuous: a failing cell and a failing widget callback are both seen."""
    t0 = time.perf_counter()
    s = Session(browser, lab)
    try:
        s.open(BROKEN)
        with pytest.raises(AssertionError, match="did not finish"):
            s.run_all()
        assert any("deliberate cell error" in e for e in s.errors()), s.errors()
        slider = s.page.locator(f".jp-OutputArea-output :is({SLIDER})").first
        slider.wait_for(timeout=30_000)
        s.move_slider(slider)
        deadline = time.monotonic() + REDRAW_TIMEOUT
        while not any("deliberate callback error" in e for e in s.errors()):
            assert time.monotonic() < deadline, f"callback error not seen: {s.errors()}"
            s.page.wait_for_timeout(200)
        assert not s.outside, f"the page tried to reach the network: {s.outside[:5]}"
    finally:
        s.close()
    _say(capsys, f"{BROKEN}: cell error and widget-callback error detected in {time.perf_counter() - t0:.1f} s")
