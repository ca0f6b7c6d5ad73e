"""Importing the kit has no side effects: no subprocess (git is read when a run is written), no
change to the user's matplotlib settings (the kit's figures draw inside ``plots.style()``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# In a fresh interpreter: every cpcl_kit module imported under an audit hook that records every
# process the interpreter would start, and matplotlib's settings before and after.
# The kit's dependencies are imported first: torch itself may run ldconfig on import (its CUDA
# library finder), which is not the kit's doing.
_PROBE = r"""
import json, pkgutil, importlib, sys
import numpy, pandas, seaborn, sklearn, torch, torchvision, tqdm  # noqa: F401
started = []
def hook(event, args):
    if event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork", "os.spawn"):
        started.append([event, repr(args)[:200]])
sys.addaudithook(hook)
import matplotlib
matplotlib.use("Agg")
before = {k: repr(v) for k, v in matplotlib.rcParams.items()}
import cpcl_kit
names = sorted(m.name for m in pkgutil.walk_packages(cpcl_kit.__path__, "cpcl_kit.") if m.name != "cpcl_kit.__main__")
for name in names:
    importlib.import_module(name)
after = {k: repr(v) for k, v in matplotlib.rcParams.items()}
print(json.dumps({"modules": names, "started": started,
                  "changed": sorted(k for k in before if before[k] != after.get(k))}))
"""


def test_importing_every_module_starts_no_process_and_keeps_matplotlib_settings():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"cpcl_kit.teach.plots", "cpcl_kit.engine.train", "cpcl_kit.engine.runs", "cpcl_kit.provenance"} <= set(res["modules"])
    assert res["started"] == [], f"importing the kit started processes: {res['started']}"
    assert res["changed"] == [], f"importing the kit changed matplotlib settings: {res['changed']}"


def test_figures_draw_in_the_kits_style_and_leave_the_users_settings():
    from cpcl_kit.teach import plots

    before = dict(matplotlib.rcParams)
    fig = plots.weighting_surface(num_classes=4)
    # drawn in the kit's look: seaborn's whitegrid axes ...
    assert fig.axes[0].get_facecolor()[:3] == matplotlib.colors.to_rgb("white")
    with plots.style():
        assert matplotlib.rcParams["axes.grid"] is True
    # ... and the user's settings as they were
    assert dict(matplotlib.rcParams) == before
    plt.close("all")
