"""Every notebook runs headlessly with its smoke parameters (papermill, this venv's kernel)."""

import importlib.util
import json
import re

import pytest

from cpcl_kit.teach.runner import demo_parameters, notebooks, run_notebook

NOTEBOOKS = notebooks()

# Running a notebook needs the test extras (papermill and a Jupyter kernel); a machine with only the
# kit's own dependencies skips those tests and still checks the notebooks' source.
_MISSING = [m for m in ("papermill", "nbformat", "nbconvert", "ipykernel") if importlib.util.find_spec(m) is None]
needs_jupyter = pytest.mark.skipif(bool(_MISSING), reason=f"running notebooks needs {', '.join(_MISSING)} "
                                                          f"(pip install -e '.[test]')")


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_clean(nb):
    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{nb.name} is stored with outputs: clear them before committing"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name}: expected exactly one cell tagged 'parameters'"
    src = "".join(tagged[0]["source"])
    assert "preset" in src and "out_dir" in src, f"{nb.name}: parameters need preset and out_dir"
    assert data["metadata"]["kernelspec"]["language"] == "python"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """One output folder for all notebooks, as `make demo` uses: the CPCL run that 04, 05, 06 and 08
    share (and 03's supervised run that 06 compares with) is trained once, then reused."""
    return tmp_path_factory.mktemp("demo-out")


# The notebooks make demo starts first, side by side: test_run_demo_in_parallel runs them that way
# (and checks them as below), so they are not run a second time one by one.
PARALLEL = ("01", "02")


def _check_executed(nb_name: str, demo_out):
    executed = json.loads((demo_out / "notebooks" / nb_name).read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{nb_name}: {errors[:1]}"
    figures = list((demo_out / "figures").glob(f"{nb_name[:2]}_*.png"))
    assert figures, f"{nb_name} saved no figure under out_dir/figures"
    texts = [o.get("text", "") for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    hidden = [t for t in texts if "HiddenLineWarning" in t]
    assert not hidden, f"{nb_name}: a saved figure hides a line under another: {hidden[:1]}"
    problems = reader_problems(executed)
    assert not problems, f"{nb_name}: the reader sees {problems[:3]}"
    inline = sum("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
    assert inline >= len(figures), f"{nb_name}: {len(figures)} figures saved, {inline} shown inline"


# An absolute path: a "/" after a separator, with at least one folder ("1/16" and "a/b" are not).
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=\[:,])(/(?:[\w.@+-]+/)+[\w.@+-]*)")
DICT_REPR = re.compile(r"\{'[^']+': ")


def _shown_texts(output: dict):
    if output.get("output_type") == "stream":
        yield "".join(output.get("text", ""))
    for kind in ("text/plain", "text/html", "text/markdown"):
        if kind in output.get("data", {}):
            yield "".join(output["data"][kind])


def reader_problems(executed: dict) -> list[str]:
    """What no reader should see in an executed notebook's outputs: a machine's absolute path, a
    ``PosixPath(...)`` or a dict's repr, each as "cell N: what"."""
    found = []
    for i, cell in enumerate(executed["cells"]):
        for output in cell.get("outputs", []):
            for text in _shown_texts(output):
                found += [f"cell {i}: path {m}" for m in ABSOLUTE_PATH.findall(text)]
                found += [f"cell {i}: {text[:60]!r}" for bad in ("PosixPath(",) if bad in text]
                if DICT_REPR.search(text):
                    found.append(f"cell {i}: a dict {DICT_REPR.search(text).group()!r}...")
    return found


def test_reader_problems_finds_paths_reprs_and_dicts():
    """The check above on outputs made to fail it, and on ones that pass (fractions, relative paths)."""
    def nb(*texts):
        return {"cells": [{"outputs": [{"output_type": "stream", "text": t}]} for t in texts]}

    assert reader_problems(nb("labeled 1/16, runs/cpcl_demo and <cache>/prepared, 3/4 of ~/x")) == []
    assert len(reader_problems(nb("in /tmp/out/runs", "PosixPath('a')", "x = {'miou': 0.7}"))) == 3


@needs_jupyter
def test_run_demo_in_parallel(demo_out, capsys):
    """--jobs 2: two kernels at once, each with one torch thread; rows for every notebook run; a bad
    --jobs is one line. Runs before the notebooks that need what these two make."""
    from cpcl_kit.errors import KitError
    from cpcl_kit.teach.runner import run_demo

    rows = run_demo(demo_out, preset="smoke", only=list(PARALLEL), jobs=2)
    assert sorted(r["notebook"][:2] for r in rows) == list(PARALLEL)
    assert all((demo_out / "notebooks" / r["notebook"]).with_suffix(".html").exists() for r in rows)
    assert capsys.readouterr().out.count("done in") == 2
    for r in rows:
        _check_executed(r["notebook"], demo_out)
    with pytest.raises(KitError, match="--jobs: expected at least 1, got 0"):
        run_demo(demo_out, preset="smoke", jobs=0)


@needs_jupyter
@pytest.mark.parametrize("nb", [nb for nb in NOTEBOOKS if nb.name[:2] not in PARALLEL], ids=lambda p: p.name)
def test_notebook_runs_with_smoke_parameters(nb, demo_out):
    # the parameters make demo passes (widgets headless); the browser test runs notebook 08's widgets
    run_notebook(nb, demo_out / "notebooks" / nb.name, demo_parameters(nb, "smoke", demo_out), cwd=demo_out)
    _check_executed(nb.name, demo_out)


@needs_jupyter
def test_the_demo_trains_what_the_runner_says(demo_out):
    """DEMO_TRAINS (what benchmarks/speed.py times as make demo's training) names exactly the runs
    the notebooks leave in their output folder."""
    from cpcl_kit.config import make_config
    from cpcl_kit.engine import runs
    from cpcl_kit.teach.runner import DEMO_TRAINS

    if not all((demo_out / "notebooks" / nb.name).exists() for nb in NOTEBOOKS):
        pytest.skip("the notebooks have not all run into this session's demo folder (run the whole file)")
    made = {d.name for d in (demo_out / "runs").iterdir()}
    assert made == {runs.run_dir_name(make_config("smoke", method=m, **s)) for _, m, s in DEMO_TRAINS}


@needs_jupyter
def test_a_headless_kernel_talks_over_private_sockets_and_leaves_nothing(tmp_path, capfd):
    """papermill's kernel uses Unix sockets in a private temporary folder (not unencrypted TCP, and
    no warning about it in make demo's output); the folder goes with the run, and the kernelspec
    folder is made once per process."""
    import os
    import tempfile

    import nbformat

    from cpcl_kit.teach.runner import use_this_python_as_kernel

    code = "from ipykernel.kernelapp import IPKernelApp\nprint(IPKernelApp.instance().transport)"
    src = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), str(src))
    use_this_python_as_kernel()  # (before the temporary folder moves: the process's own kernelspec)
    own_tmp = tempfile.mkdtemp(prefix="t")  # short: a socket's path has room for about 100 bytes
    path_before, saved = os.environ["JUPYTER_PATH"], tempfile.tempdir
    tempfile.tempdir = own_tmp
    try:
        run_notebook(src, tmp_path / "out.ipynb", cwd=tmp_path)
    finally:
        tempfile.tempdir = saved
    assert os.listdir(own_tmp) == []  # the sockets' folder is gone
    os.rmdir(own_tmp)
    assert os.environ["JUPYTER_PATH"] == path_before  # the same kernelspec folder, not one more
    assert "without encryption" not in capfd.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb", "tiny.ipynb"]
    ran = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert ran.cells[0].outputs[0]["text"].strip() == "ipc"


def test_a_removed_kernelspec_folder_is_made_again():
    import os
    import shutil

    from cpcl_kit.teach import runner

    runner.use_this_python_as_kernel()
    first = os.environ["JUPYTER_PATH"].split(os.pathsep)[0]
    shutil.rmtree(first)  # e.g. a temporary-folder cleaner
    runner.use_this_python_as_kernel()
    again = os.environ["JUPYTER_PATH"].split(os.pathsep)[0]
    assert again != first and os.path.isfile(os.path.join(again, "kernels", "python3", "kernel.json"))


def test_without_unix_sockets_the_kernel_keeps_jupyters_transport(monkeypatch):
    from traitlets.config import Config

    from cpcl_kit.teach import runner

    assert runner._ipc_kernel("/x")["KernelManager"]["transport"] == "ipc"
    assert runner._ipc_kernel("/" + "x" * 95) == Config()  # no room in a socket's path
    monkeypatch.setattr(runner.os, "name", "nt")  # Windows: zmq has no ipc transport there
    assert runner._ipc_kernel("/x") == Config()


@needs_jupyter
def test_notebook_trains_on_a_folder_of_your_own(tmp_path):
    """03 with dataset="folder" and data_root: the supervised run, its figures and the predictions on
    a small folder data set (images of several sizes, some without masks) the test builds."""
    from folder_tree import make_tree

    root = make_tree(tmp_path / "mine", n=24, masked=18)
    nb = next(n for n in NOTEBOOKS if n.name.startswith("03"))
    params = {**demo_parameters(nb, "smoke", tmp_path), "dataset": "folder", "data_root": str(root),
              "labeled": "all"}
    run_notebook(nb, tmp_path / "notebooks" / nb.name, params, cwd=tmp_path)
    _check_executed(nb.name, tmp_path)
    config = json.loads(next((tmp_path / "runs").rglob("config.json")).read_text())
    assert config["dataset"] == "folder" and config["data_root"] == str(root)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_are_short(nb):
    """House rule: a code cell calls the library in about 12 lines at most."""
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    long = [(i, len("".join(c["source"]).strip().splitlines())) for i, c in enumerate(cells)
            if len("".join(c["source"]).strip().splitlines()) > 12]
    assert not long, f"{nb.name}: code cells (index, lines) over 12 lines: {long}"


def test_paper_preset_rule():
    """One rule in every notebook: a paper preset runs only with its data and a GPU (or an explicit
    CPU opt-in), and otherwise says in one line what to pass; never a silent switch."""
    from cpcl_kit.errors import KitError
    from cpcl_kit.teach.notebook import notebook_config

    with pytest.raises(KitError, match=r"preset 'voc' is the paper experiment on voc: pass data_root="):
        notebook_config("voc")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(KitError, match="no CUDA device is here: run it on a GPU, or pass allow_cpu=True"):
            notebook_config("cityscapes", data_root="/data/city")
    assert notebook_config("voc", data_root="/data/voc", allow_cpu=True).data_root == "/data/voc"
    assert notebook_config("voc", needs="model").backbone == notebook_config("voc", "/d", True).backbone
    with pytest.raises(KitError, match="embedded digit scenes; use a CPU preset"):
        notebook_config("voc", needs="digits")
    with pytest.raises(KitError, match="data_root: preset 'demo' trains on the embedded digit scenes"):
        notebook_config("demo", data_root="/data/voc")
    assert notebook_config("demo", method="supervised").method == "supervised"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_applies_the_preset_rule(nb):
    """The rule lives in one function: every notebook's setup goes through it (and so never switches
    a paper preset silently to another); notebooks that train take data_root and allow_cpu."""
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    code = "".join("".join(c["source"]) for c in cells[:3])
    assert "notebook_config(" in code or "open_shared_run(" in code, nb.name
    assert 'make_config("demo"' not in code and "make_config(" not in code, nb.name
    if not nb.name.startswith(("01", "02")):
        params = "".join(cells[0]["source"])
        assert "data_root = None" in params and "allow_cpu = False" in params, nb.name


@needs_jupyter
def test_make_demo_runs_widget_notebooks_headless(tmp_path):
    by_name = {nb.name[:2]: demo_parameters(nb, "demo", tmp_path) for nb in NOTEBOOKS}
    assert by_name["08"] == {"preset": "demo", "out_dir": str(tmp_path), "interactive": False}
    assert by_name["03"] == {"preset": "demo", "out_dir": str(tmp_path)}


def _code(nb) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")


# What a notebook makes for the later ones in the same output folder, by the calls that make or reuse it.
MADE_FOR_LATER = {
    "the shared CPCL run": ("shared_run(", "runs_at_hand("),
    "a notebook run folder": ("notebook_run_dir(",),
}


def test_demo_needs_follow_the_notebooks_code():
    """make demo runs notebooks side by side (--jobs 2): whatever a notebook reuses, the first notebook
    that makes it must have finished first, so DEMO_NEEDS must say so (transitively)."""
    from cpcl_kit.teach.runner import DEMO_NEEDS

    code = {nb.name[:2]: _code(nb) for nb in NOTEBOOKS}

    def before(key):
        seen, todo = set(), list(DEMO_NEEDS.get(key, ()))
        while todo:
            k = todo.pop()
            if k not in seen:
                seen.add(k)
                todo += DEMO_NEEDS.get(k, ())
        return seen

    for what, calls in MADE_FOR_LATER.items():
        users = [k for k in code if any(c in code[k] for c in calls)]
        assert len(users) > 1, f"no notebook reuses {what}: update MADE_FOR_LATER"
        for k in users[1:]:
            assert users[0] in before(k), f"notebook {k} reuses {what} made by {users[0]}: add it to DEMO_NEEDS[{k!r}]"
    assert all(n < k for k, needs in DEMO_NEEDS.items() for n in needs)  # number order stays a valid order


def test_demo_ready_starts_what_may_start():
    from cpcl_kit.teach.runner import demo_ready

    names = [nb.name[:2] for nb in NOTEBOOKS]
    assert demo_ready(names, []) == ["01", "02", "03", "04"]  # the backbone ships: nothing to wait for
    assert demo_ready(["07"], ["04"]) == []  # 07 looks at the CPCL run 04 trains
    assert demo_ready(["05", "06", "08"], ["03"]) == ["05", "08"]  # 06 compares with 03's run
    assert demo_ready(["05", "06"], ["04"]) == []


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_is_a_lesson(nb):
    """The course structure: what you will learn (three points) first; "what you should see" before a
    key figure; two or three questions whose answers the student reveals (<details>); a recap; and a
    link to a notebook that exists (the next one, where there is one)."""
    import re

    cells = json.loads(nb.read_text())["cells"]
    prose = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    learn = prose[0].split("**What you will learn**", 1)
    assert len(learn) == 2, f"{nb.name}: the first cell starts with **What you will learn**"
    assert re.findall(r"^\d\. ", learn[1], re.M)[:3] == ["1. ", "2. ", "3. "], f"{nb.name}: three points to learn"
    assert any("**What you should see:**" in p for p in prose), f"{nb.name}: no 'What you should see'"
    (questions,) = [p for p in prose if p.startswith("## Questions")] or [""]
    answers = questions.count("<details><summary>Answer</summary>")
    assert 2 <= answers == questions.count("</details>") <= 3, f"{nb.name}: 2-3 questions with hidden answers"
    assert any(p.startswith("## Recap") for p in prose), f"{nb.name}: no recap"
    recap = next(p for p in prose if p.startswith("## Recap"))
    links = re.findall(r"\]\((\d\d_[a-z0-9_]+\.ipynb)\)", recap)
    assert links and all((nb.parent / link).exists() for link in links), f"{nb.name}: recap links {links}"
    following = [n.name for n in NOTEBOOKS if n.name > nb.name]
    if following:
        assert following[0] in links, f"{nb.name}: the recap links the next notebook, {following[0]}"


@needs_jupyter
def test_no_two_saved_figures_are_the_same_image(demo_out):
    """After the notebooks above ran in one folder: every saved figure shows something of its own."""
    import hashlib

    figures = sorted((demo_out / "figures").glob("*.png"))
    if len(figures) < 2:
        pytest.skip("the notebooks above did not run in this process")
    by_hash = {}
    for f in figures:
        by_hash.setdefault(hashlib.sha256(f.read_bytes()).hexdigest(), []).append(f.name)
    same = [names for names in by_hash.values() if len(names) > 1]
    assert not same, f"identical figures: {same}"


def test_classroom_default_is_the_best_run_at_hand(tmp_path, monkeypatch, capsys):
    """Notebook 08 defaults to preset "best": the prepared set's CPCL run when it is here, else the
    demo run (trained with a bar), never the smoke run."""
    from cpcl_kit.experiments import prepared
    from cpcl_kit.teach import analysis, runner
    from cpcl_kit.teach.notebook import BEST, open_shared_run

    params = "".join(next(c for c in json.loads((runner.NOTEBOOK_DIR / "08_classroom_demo.ipynb").read_text())
                          ["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    assert f'preset = "{BEST}"' in params
    trained = []

    class Run:
        metrics, out_dir = {"miou": 0.5}, tmp_path

    monkeypatch.setattr(prepared, "find", lambda *a, **k: None)
    monkeypatch.setattr("cpcl_kit.data.build.build_data", lambda cfg: None)
    monkeypatch.setattr(analysis, "shared_run", lambda cfg, out, progress, data: trained.append((cfg, progress)) or Run())
    cfg, run, _ = open_shared_run(BEST, tmp_path)
    assert cfg.preset == "demo" and trained[0][0].preset == "demo" and trained[0][1] is True
    assert "else the 'demo' run" in capsys.readouterr().out


def test_kit_warnings_in_a_notebook_are_one_line_without_a_source_path(monkeypatch):
    import warnings

    from cpcl_kit.config import RandomInitWarning
    from cpcl_kit.teach.notebook import one_line_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    one_line_warnings()
    one_line_warnings()  # once is enough: a second call wraps nothing
    assert warnings.formatwarning("a\n  b", RandomInitWarning, "/x/train.py", 3) == "warning: a b\n"
    assert "/x/y.py:3: UserWarning: c" in warnings.formatwarning("c", UserWarning, "/x/y.py", 3)
