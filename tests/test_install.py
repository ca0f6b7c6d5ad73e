"""The kit as a user installs it: a wheel built from this checkout, installed offline into a fresh
folder, run from another folder. It trains (from the backbone it ships as package data), caches in
the user's cache, and says in one line what only a checkout has (notebooks, committed results)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, env, timeout=240):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_wheel_installed_elsewhere_trains_from_its_shipped_backbone(tmp_path):
    # build from a copy: an in-tree build would leave build/ and egg-info in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "cpcl_kit", src / "cpcl_kit", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # offline: nothing is fetched
    built = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                 tmp_path, env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("cpcl_kit-*.whl")
    target = tmp_path / "site"
    inst = _run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], tmp_path, env)
    assert inst.returncode == 0, inst.stderr[-3000:]
    assert list((target / "cpcl_kit" / "weights").glob("*.pt")), "the shipped backbone is not package data"

    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), CPCL_KIT_CACHE=str(cache), OMP_NUM_THREADS="1")
    code = ("import cpcl_kit, sys; from cpcl_kit.experiments import noise; print(cpcl_kit.__file__); "
            "print(noise.for_preset('benchmark'))")
    where = _run([sys.executable, "-c", code], work, env)
    assert where.returncode == 0, where.stderr[-3000:]
    assert where.stdout.splitlines() == [str(target / "cpcl_kit" / "__init__.py"), "None"]
    # the committed results come with the checkout: one line says so, the reader answers None
    assert where.stderr.strip().count("\n") == 0 and "come with the kit's git checkout" in where.stderr

    run = _run([sys.executable, "-m", "cpcl_kit", "train", "--preset", "smoke", "--method", "supervised",
                "--quiet", "--out", "run", "--set", "iterations=2", "--set", "log_every=1", "--set",
                "checkpoint_every=2", "--set", "n_train_scenes=16", "--set", "n_val_scenes=4"], work, env)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["iterations"] == 2 and 0 <= metrics["miou"] <= 1
    assert metrics["backbone_init"]["shipped"] is True  # found as package data, not trained
    assert metrics["code"] == {"commit": None, "dirty": None}  # no git checkout to name
    assert not cache.exists() or not list(cache.rglob("*.pt"))  # nothing needed training

    demo = _run([sys.executable, "-m", "cpcl_kit", "demo", "--out", "out"], work, env)
    assert demo.returncode == 2 and demo.stderr.startswith("error: demo: no tutorial notebooks in"), demo.stderr
    assert demo.stderr.count("\n") == 1 and not (work / "out").exists()
