"""Which code produced a result, and how: the git commit of the checkout the kit runs from, and the
command that ran, as a user types it in a clone of the repository.

``code_version`` is the one place the kit (runs' metrics.json) and the benchmark scripts (their
result files) read it. It runs git, so it is called when a result is written, never on import.
``command_line`` and ``recorded_path`` are the one way a benchmark script records its command and its
paths: a committed result is read in other clones, where this machine's folders mean nothing.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
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


def recorded_path(path, option: str = "path", root: Path = ROOT, cwd: Path | None = None) -> str:
    """``path`` as a clone of the repository names it: relative to the repository root when it lies
    inside (what a user types there), else the placeholder ``<option>``: a folder of the machine
    that ran means nothing in a clone, and the option's name says what belongs there."""
    full = (Path(cwd or Path.cwd()) / Path(path).expanduser()).resolve()
    try:
        return full.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return f"<{option.lstrip('-')}>"


def command_line(script, argv: Sequence[str] | None = None, python: str = "python", root: Path = ROOT,
                 cwd: Path | None = None) -> str:
    """``python <script> <argv>`` as a user types it in a clone: the script and every path among the
    arguments relative to the repository root, a path outside it the placeholder of its option
    (``--runs <runs>``), every other argument as given. ``argv``: this process's by default."""
    words, option = [python, _quoted(recorded_path(script, "script", root, cwd))], "path"
    for token in sys.argv[1:] if argv is None else argv:
        words.append(_word(token, option, root, cwd))
        option = token if token.startswith("-") else "path"  # what names the next argument's placeholder
    return " ".join(words)


def _word(token: str, option: str, root: Path, cwd: Path | None) -> str:
    """One argument as recorded: a path as a clone names it, anything else as given; quoted for a shell."""
    if token.startswith("--") and "=" in token:  # --runs=DIR: the option names its own value
        name, _, value = token.partition("=")
        return shlex.quote(name + "=") + _word(value, name, root, cwd)
    if not _names_a_path(token, Path(cwd or Path.cwd())):
        return shlex.quote(token)
    return _quoted(recorded_path(token, option, root, cwd))


def _quoted(path: str) -> str:
    """A recorded path quoted for a shell, a placeholder as it is (quotes would hide what it is)."""
    return path if path.startswith("<") else shlex.quote(path)


def _names_a_path(token: str, cwd: Path) -> bool:
    """Absolute, home and ./ ../ tokens are paths whatever they name (another machine's need not
    exist here); any other token only when it has a separator and names something that exists, so
    values such as ``1/16``, ``cpcl,cps`` or ``iterations=2`` stay as typed."""
    if token.startswith(("/", "~", "./", "../")) or os.path.isabs(token):
        return True
    return "/" in token and (cwd / token).exists()
