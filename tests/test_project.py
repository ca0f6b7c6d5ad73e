"""Packaging facts a user relies on: conda and pip name the same dependencies."""

import re
import tomllib

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower()


def _pins(text: str) -> dict[str, str]:
    """{name: version} of the ``name==version`` lines of a requirements-like text."""
    found = re.findall(r"^[\s-]*([A-Za-z0-9_.-]+)==([^\s#]+)", text, flags=re.M)
    return {n.lower(): v for n, v in found}


def test_environment_yml_lists_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    env = (ROOT / "environment.yml").read_text()
    listed = {_name(line.strip().lstrip("- ")) for line in env.splitlines() if line.strip().startswith("- ")}
    missing = sorted({_name(r) for r in wanted} - listed)
    assert not missing, f"environment.yml lacks {missing}"


def test_the_tested_pins_are_in_constraints_and_environment_yml_within_the_supported_ranges():
    """pyproject.toml names ranges (a CUDA machine's own torch satisfies them); constraints.txt
    pins the tested versions, which make setup installs and environment.yml repeats."""
    from packaging.requirements import Requirement

    pins = _pins((ROOT / "constraints.txt").read_text())
    assert {"torch", "torchvision"} <= set(pins)
    assert _pins((ROOT / "environment.yml").read_text()) == pins
    deps = {_name(r): Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, version in pins.items():
        assert deps[name].specifier.contains(version), f"constraints.txt pins {name}=={version} outside {deps[name]}"
    assert not [r for r in deps.values() if "==" in str(r.specifier)], "pyproject.toml pins exact versions"
    assert str(deps["torch"].specifier) == ">=2.11"  # the oldest PyTorch the kit is known to run on
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


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
    "08_classroom_demo.ipynb": ["50 %"],  # a position of the ω-threshold slider ("greys 50 %")
}


def test_no_measured_number_is_typed_into_a_notebooks_prose():
    import json

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        found = MEASURED.findall(prose)
        assert found == NOT_MEASURED.get(path.name, []), (
            f"{path.name} states {found} in its markdown; print a measured number from the run or the "
            f"committed results (cpcl_kit.experiments.noise verdicts) instead, or, if it is a setting, list it here")


# The READMEs state no measured number either; the targets a benchmark aims at are goals, not results.
GOALS = {"benchmarks/README.md": ["+5 points", "+8 points", "+3 points", "75 %"]}


@pytest.mark.parametrize("name", ["README.md", "benchmarks/README.md", "data/README.md"])
def test_no_measured_number_is_typed_into_a_readme(name):
    found = MEASURED.findall((ROOT / name).read_text())
    assert found == GOALS.get(name, []), (
        f"{name} states {found}; link or render the results table instead of typing its numbers")


def test_shown_path_hides_the_machine(tmp_path, monkeypatch):
    """What a notebook prints of a path: relative under the working folder, the cache by its variable,
    the home folder as ~, anything else as given."""
    from cpcl_kit.files import shown_path

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CPCL_KIT_CACHE", str(tmp_path / "home" / "cache"))
    assert shown_path(tmp_path / "work" / "out" / "runs") == "out/runs"
    assert shown_path(tmp_path / "home" / "cache" / "prepared") == "$CPCL_KIT_CACHE/prepared"
    assert shown_path(tmp_path / "home" / "x") == "~/x"
    assert shown_path("/etc/hosts") == "/etc/hosts"
    monkeypatch.delenv("CPCL_KIT_CACHE")
    assert shown_path(tmp_path / "home" / "cache" / "prepared") == "~/cache/prepared"
