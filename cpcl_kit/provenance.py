"""Which code produced a result: the git commit of the checkout the kit runs from.

``code_version`` is the one place the kit (runs' metrics.json) and the benchmark scripts (their
result files) read it. It runs git, so it is called when a result is written, never on import.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

# The checkout's root when the kit runs from one (cpcl_kit/..); an installed wheel has no .git there.
ROOT = Path(__file__).resolve().parent.parent


@cache  # once per process: the code that runs cannot change under it
def code_version(full: bool = False, tree: bool = False) -> dict:
    """``{"commit", "dirty"}`` of the git checkout ``cpcl_kit`` is imported from: the commit (short,
    or the full hash with ``full``) and whether tracked files differ from it, those under
    ``cpcl_kit/`` (the code that trains) or, with ``tree``, anywhere in the checkout (a benchmark's
    script too). Both None outside a git checkout (an installed wheel) or without git."""
    pkg = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=pkg, capture_output=True, text=True, check=True,
                              timeout=20).stdout.strip()

    try:
        commit = git("rev-parse", *(() if full else ("--short",)), "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", str(ROOT if tree else pkg))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changed)}
