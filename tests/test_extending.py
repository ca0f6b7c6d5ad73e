"""docs/extending.md does what it says: its plugin files, written out as they stand, and its
commands, run as they stand (in a fresh process each, as a user types them), train a data set and a
method of one's own that the package never heard of."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from folder_tree import make_tree

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), flags=re.S)


def plugin_files() -> dict[str, str]:
    """{file name: code} of the page's Python blocks, named by their first line (``# name.py: ...``)."""
    out = {}
    for code in blocks("python"):
        name = re.match(r"# (\w+\.py):", code)
        assert name, f"a Python block of {PAGE.name} does not start with '# <file>.py: ...'"
        out[name.group(1)] = code
    return out


def commands() -> list[list[str]]:
    return [shlex.split(line) for block in blocks("bash") for line in block.splitlines() if line.strip()]


def shapes_tree(root: Path) -> Path:
    """The page's layout: images and masks listed in pairs.csv (split train/val, empty mask: unlabeled)."""
    make_tree(root, n=12, masked=8, val=4)
    rows = ["image,mask,split"]
    for img in sorted((root / "images").iterdir()):
        mask = root / "masks" / img.name
        rows.append(f"images/{img.name},{'masks/' + img.name if mask.exists() else ''},train")
    for img in sorted((root / "val" / "images").iterdir()):
        rows.append(f"val/images/{img.name},val/masks/{img.name},val")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert cmd[:3] == ["python", "-m", "cpcl_kit"], cmd
    return subprocess.run([sys.executable, *cmd[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_page_has_a_data_set_and_a_method():
    assert set(plugin_files()) == {"shapes.py", "cpcl_threshold.py"}
    assert {c[c.index("--plugin") + 1] for c in commands()} == set(plugin_files())


@pytest.mark.parametrize("cmd", commands(), ids=lambda c: f"{c[c.index('--plugin') + 1]}-{c[c.index('--plugin') + 2]}")
def test_each_command_of_the_page_runs(cmd, tmp_path):
    for name, code in plugin_files().items():
        (tmp_path / name).write_text(code)
    shapes_tree(tmp_path / "my_shapes")
    done = run(cmd, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    if "train" in cmd:
        out = tmp_path / cmd[cmd.index("--out") + 1]
        config = json.loads((out / "config.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        assert config["method"] == cmd[cmd.index("--method") + 1]
        assert config["dataset"] == (cmd[cmd.index("--dataset") + 1] if "--dataset" in cmd else "digits")
        assert 0 <= metrics["miou"] <= 1
        history = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
        unsup = history[0].index("unsup2")
        assert any(row[unsup] not in ("", "nan") for row in history[1:])  # the unlabeled half ran
    else:
        report = json.loads((tmp_path / cmd[cmd.index("--out") + 1]).read_text())
        assert "shapes data set" in json.dumps(report)


def test_a_broken_plugin_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "broken.py").write_text("def step(:\n")
    done = run(["python", "-m", "cpcl_kit", "--plugin", "broken.py", "train", "--out", "x"], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "broken.py, line 1: the plugin cannot be loaded" in done.stderr


def test_a_plugin_reaches_the_processes_a_run_starts(tmp_path):
    """A process started with $CPCL_KIT_PLUGINS (which ``load_plugin`` sets, and a grid's workers
    inherit) knows the plugin's entries at its first lookup."""
    import os

    (tmp_path / "cpcl_threshold.py").write_text(plugin_files()["cpcl_threshold.py"])
    child = "from cpcl_kit import registry; print(registry.method('cpcl_threshold').nets)"
    env = dict(os.environ, CPCL_KIT_PLUGINS=str(tmp_path / "cpcl_threshold.py"))
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]
