"""How long the README's commands take on a fresh clone: the install, then the command.

    .venv/bin/python benchmarks/timing.py                    # make demo, make test, make prepared
    .venv/bin/python benchmarks/timing.py --only demo

Clones the committed HEAD into a fresh temporary folder for each command (nothing of this checkout's
.venv, out/ or caches comes along: the kit's cache, ``CPCL_KIT_CACHE``, is a fresh folder too; pip's
own download cache does), runs ``make setup`` there (the install, timed apart) and then the command
as a user would, and writes ``benchmarks/results/timing.json`` and ``.md``: the seconds of the
install and of the command, its exit code, the commit, the CPU and the goals on a 2-core machine
(make demo at most 5 minutes after the install, make test at most 10 with it; make prepared has
none). A command that fails is recorded with its exit code and the tail of its output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from cpcl_kit.files import machine, write_json, write_text  # noqa: E402
from cpcl_kit.provenance import code_version, command_line  # noqa: E402

COMMANDS = {"demo": "make demo", "test": "make test", "prepared": "make prepared"}
# (seconds, what they count): make demo after the install; make test with it (what CI runs)
GOALS = {"demo": (5 * 60, "command"), "test": (10 * 60, "with install")}


def time_command(command: str, cwd: Path, log: Path, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(command, shell=True, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    seconds = round(time.perf_counter() - t0, 1)
    cache = Path(env["CPCL_KIT_CACHE"]) if env and "CPCL_KIT_CACHE" in env else None
    tail = [as_in_any_clone(line, cwd, cache) for line in log.read_text(errors="replace").splitlines()[-5:]]
    return {"command": command, "seconds": seconds, "returncode": rc, "tail": tail}


def as_in_any_clone(line: str, clone: Path, cache: Path | None = None) -> str:
    """A line of output as it reads in any clone: the temporary clone is the repository root there,
    so paths under it are relative to it, the kit's temporary cache is ``$CPCL_KIT_CACHE`` and the
    home folder is ``~`` (the tail is committed, and this machine's folders mean nothing elsewhere)."""
    if cache is not None:
        line = line.replace(str(cache), "$CPCL_KIT_CACHE")
    line = line.replace(f"{clone}/", "").replace(str(clone), ".")
    return line.replace(f"{Path.home()}/", "~/")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(COMMANDS), action="append", help="time only this command (repeatable)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--keep-out", type=Path, help="copy make demo's out/ folder here (the executed notebooks)")
    args = p.parse_args(argv)
    commit = code_version()["commit"]
    path = args.results / "timing.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    for key in args.only or list(COMMANDS):
        with tempfile.TemporaryDirectory(prefix="cpcl-kit-clone-") as tmp:
            clone = Path(tmp) / "cpcl-kit"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env = {**os.environ, "CPCL_KIT_CACHE": str(Path(tmp) / "cache")}
            print(f"make setup, then {COMMANDS[key]}, in {clone} ...", flush=True)
            setup = time_command("make setup", clone, Path(tmp) / "setup.log", env)
            row = time_command(COMMANDS[key], clone, Path(tmp) / f"{key}.log", env) if setup["returncode"] == 0 \
                else {**setup, "command": COMMANDS[key], "seconds": 0.0}  # the install failed: not run
            if args.keep_out and (clone / "out").is_dir():
                shutil.copytree(clone / "out", args.keep_out / key, dirs_exist_ok=True)
        row.update(install_seconds=setup["seconds"], with_install_seconds=round(setup["seconds"] + row["seconds"], 1),
                   commit=commit, cpu=machine())
        if key in GOALS:
            goal, counts = GOALS[key]
            took = row["seconds"] if counts == "command" else row["with_install_seconds"]
            row.update(goal_seconds=goal, goal_counts=counts, met=row["returncode"] == 0 and took <= goal)
        data[key] = row
        print(f"  install {setup['seconds']:.0f} s, {COMMANDS[key]} {row['seconds']:.0f} s, exit {row['returncode']}",
              flush=True)
    data.update(commit=commit, cpu=machine(),
                command=command_line(__file__, argv))
    write_json(path, data)
    lines = ["# The README's commands on a fresh clone", "", f"`{data['command']}`", "",
             "| command | install (s) | command (s) | with install (min) | goal | exit | commit | CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for key in COMMANDS:
        if key in data:
            r = data[key]
            install = r.get("install_seconds")
            goal = (f"{r['goal_seconds'] / 60:.0f} min {r.get('goal_counts', 'with install')}"
                    if "goal_seconds" in r else "none")
            lines.append(f"| `{r['command']}` | {'' if install is None else f'{install:.0f}'} | {r['seconds']:.0f} | "
                         f"{r.get('with_install_seconds', r['seconds']) / 60:.1f} | {goal} | {r['returncode']} | "
                         f"{r.get('commit')} | {r.get('cpu')} |")
    if any("install_seconds" not in data[k] for k in COMMANDS if k in data):
        lines += ["", "Rows without an install time were timed with the install inside the command."]
    write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return data


if __name__ == "__main__":
    main()
