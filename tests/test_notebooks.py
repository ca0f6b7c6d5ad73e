"""Every notebook runs headlessly with its smoke parameters (papermill, this venv's kernel)."""

import json

import pytest

from cpcl_kit.notebooks import notebooks, run_notebook

NOTEBOOKS = notebooks()


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


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_with_smoke_parameters(nb, tmp_path):
    out = tmp_path / nb.name
    run_notebook(nb, out, {"preset": "smoke", "out_dir": str(tmp_path)}, cwd=tmp_path)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    figures = list((tmp_path / "figures").glob("*.png"))
    assert figures, f"{nb.name} saved no figure under out_dir/figures"
