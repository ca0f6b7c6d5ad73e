"""Packaging facts a user relies on: conda and pip name the same dependencies."""

import re
import tomllib
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
