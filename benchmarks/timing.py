"""How long the README's two commands take on a fresh clone, install included.

    .venv/bin/python benchmarks/timing.py                    # make demo, then make test
    .venv/bin/python benchmarks/timing.py --only demo

Clones the committed HEAD into a fresh temporary folder for each command (nothing of this checkout's
.venv, out/ or caches comes along; pip's own download cache does), runs the command there as a user
would, install included, and writes
``benchmarks/results/timing.json`` and ``.md``: the seconds of each command, its exit code, the commit,
the CPU and the goals (make demo at most 15 minutes, make test at most 10, on a 2-core machine).
A command that fails is recorded with its exit code and the tail of its output.
"""

from __future__ import annotations

import argparse
import json
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

COMMANDS = {"demo": "make demo", "test": "make test"}
GOALS = {"demo": 15 * 60, "test": 10 * 60}


def time_command(command: str, cwd: Path, log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(command, shell=True, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = round(time.perf_counter() - t0, 1)
    tail = [as_in_any_clone(line, cwd) for line in log.read_text(errors="replace").splitlines()[-5:]]
    return {"command": command, "seconds": seconds, "returncode": rc, "tail": tail}


def as_in_any_clone(line: str, clone: Path) -> str:
    """A line of output as it reads in any clone: the temporary clone is the repository root there,
    so paths under it are relative to it, and the home folder is ``~`` (the tail is committed, and
    this machine's folders mean nothing elsewhere)."""
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
            print(f"{COMMANDS[key]} in {clone} ...", flush=True)
            row = time_command(COMMANDS[key], clone, Path(tmp) / f"{key}.log")
            if args.keep_out and (clone / "out").is_dir():
                shutil.copytree(clone / "out", args.keep_out / key, dirs_exist_ok=True)
        row.update(goal_seconds=GOALS[key], met=row["returncode"] == 0 and row["seconds"] <= GOALS[key],
                   commit=commit, cpu=machine())
        data[key] = row
        print(f"  {row['seconds']:.0f} s, exit {row['returncode']}", flush=True)
    data.update(commit=commit, cpu=machine(),
                command=command_line(__file__, argv))
    write_json(path, data)
    lines = ["# The two commands on a fresh clone", "", f"`{data['command']}`", "",
             "| command | seconds | minutes | goal (min) | exit | commit | CPU |", "|---|---|---|---|---|---|---|"]
    for key in COMMANDS:
        if key in data:
            r = data[key]
            lines.append(f"| `{r['command']}` | {r['seconds']:.0f} | {r['seconds'] / 60:.1f} | "
                         f"{r['goal_seconds'] / 60:.0f} | {r['returncode']} | {r.get('commit')} | {r.get('cpu')} |")
    write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return data


if __name__ == "__main__":
    main()
