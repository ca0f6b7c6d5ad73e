"""Packaging facts a user relies on: conda and pip name the same dependencies."""

import re
import tomllib

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    env = (ROOT / "environment.yml").read_text()
    listed = {_name(line.strip().lstrip("- ")) for line in env.splitlines() if line.strip().startswith("- ")}
    missing = sorted({_name(r) for r in wanted} - listed)
    assert not missing, f"environment.yml lacks {missing}"
    # the torch pins must be the same exact versions
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in project["dependencies"] and pin in env


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


# A number followed by "%" or "point(s)" in prose is a measured result unless it is a setting or an
# illustration. Measured numbers are computed from the runs or the committed results, never typed:
# these are the only such figures the notebooks' markdown may hold, each a setting or an example.
MEASURED = re.compile(r"[+−-]?\d+(?:[.,]\d+)?\s?(?:%|points?\b|pts\b)")
NOT_MEASURED = {
    "01_data_and_splits.ipynb": ["30 %",   # POOL_VAL_FRACTION: the share of each digit kept for validation
                                 "50 %"],  # CutMix: each box covers 25-50 % of the area
    "05_confidence_weighting.ipynb": ["80 %", "80 %"],  # what "calibrated" means, by example
    "07_ablations.ipynb": ["8 %"],  # the affine student view's shift, a setting (perturb.py)
}


def test_no_measured_number_is_typed_into_a_notebooks_prose():
    import json

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        found = MEASURED.findall(prose)
        assert found == NOT_MEASURED.get(path.name, []), (
            f"{path.name} states {found} in its markdown; print a measured number from the run or the "
            f"committed results (cpcl_kit.noise verdicts) instead, or, if it is a setting, list it here")


# The READMEs state no measured number either; the targets a benchmark aims at are goals, not results.
GOALS = {"benchmarks/README.md": ["+5 points", "+8 points", "+3 points", "75 %"]}


@pytest.mark.parametrize("name", ["README.md", "benchmarks/README.md", "data/README.md"])
def test_no_measured_number_is_typed_into_a_readme(name):
    found = MEASURED.findall((ROOT / name).read_text())
    assert found == GOALS.get(name, []), (
        f"{name} states {found}; link or render the results table instead of typing its numbers")
