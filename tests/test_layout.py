"""The package's layout is its architecture: every module sits in one layer, imports only point down
(or within its own layer), and no module reaches for another module's private (underscore) names.

Layers, bottom to top; a module imports only from its own layer and the ones before it:

    bottom       cpcl_kit/{config,constants,deviations,errors,files,limits,provenance,registry,typed}.py
    data         cpcl_kit/data/          (digit scenes, data sets, splits, transforms, loaders, palette)
    nets         cpcl_kit/nets/          (DeepLabV3+, backbone pre-training, summaries)
    method       cpcl_kit/method/        (CPCL, the training steps, student views, scenes)
    engine       cpcl_kit/engine/        (training loop, evaluation, run folders, TensorBoard, doctor)
    experiments  cpcl_kit/experiments/   (ablation grids, the prepared set, published numbers, noise)
    teach        cpcl_kit/teach/         (analysis, figures, classroom, notebooks)
    top          cpcl_kit/{__init__,__main__,cli}.py

Everything here is read from the package's files with ``ast``: a new module is checked as soon as it
exists, and one in no layer fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cpcl_kit"

BOTTOM = {"config", "constants", "deviations", "errors", "files", "limits", "provenance", "registry", "typed"}
SUBPACKAGES = ["data", "nets", "method", "engine", "experiments", "teach"]  # bottom to top
TOP = {"__init__", "__main__", "cli"}
LAYERS = ["bottom", *SUBPACKAGES, "top"]


def _modules() -> dict[str, Path]:
    """{dotted name: file} for every module of the package (a package is its ``__init__``)."""
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = ("cpcl_kit", *path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(name: str) -> str | None:
    """The layer of a module of the package, or None when it is in none."""
    parts = name.split(".")[1:]
    if not parts:  # cpcl_kit/__init__.py
        return "top"
    if len(parts) == 1:
        if parts[0] in BOTTOM:
            return "bottom"
        if parts[0] in TOP:
            return "top"
        if parts[0] in SUBPACKAGES and MODULES[name].name == "__init__.py":
            return parts[0]
        return None
    return parts[0] if parts[0] in SUBPACKAGES else None


def _package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _resolve(name: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _package_of(name).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import of the kit in module ``name``,
    at module level and inside functions. ``from . import runs`` imports the module ``runs``."""
    out = []
    for node in ast.walk(ast.parse(MODULES[name].read_text(), str(MODULES[name]))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "cpcl_kit"]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            if source.split(".")[0] != "cpcl_kit":
                continue
            for a in node.names:
                sub = f"{source}.{a.name}"
                out.append((node.lineno, sub, []) if sub in MODULES else (node.lineno, source, [a.name]))
    return out


def _private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


def test_the_layers_are_the_packages_folders():
    assert (PKG / "__init__.py").exists()
    for sub in SUBPACKAGES:
        assert (PKG / sub / "__init__.py").exists(), f"cpcl_kit/{sub}/ is not a package"
    assert {n for n in MODULES if layer_of(n) == "engine"} >= {"cpcl_kit.engine.train", "cpcl_kit.engine.runs"}
    # the check itself: a flat module or a module of a folder outside the layers is in none
    assert layer_of("cpcl_kit.notebooks") is None
    assert layer_of("cpcl_kit.extras.thing") is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_in_a_layer(name):
    assert layer_of(name) is not None, (
        f"{MODULES[name].relative_to(PKG.parent)} is in no layer: put it in one of the subpackages "
        f"{SUBPACKAGES}, or add it to the bottom or top layer in tests/test_layout.py on purpose")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    mine = LAYERS.index(layer_of(name) or "top")
    up = []
    for line, target, _ in _imports(name):
        if target not in MODULES:
            up.append(f"line {line}: {target} is no module of the kit")
            continue
        theirs = LAYERS.index(layer_of(target) or "top")
        if theirs > mine:
            up.append(f"line {line}: {target} ({LAYERS[theirs]}) is above {name} ({LAYERS[mine]})")
    assert not up, f"{MODULES[name].relative_to(PKG.parent)} imports upwards:\n" + "\n".join(up)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(name):
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    bad = [f"line {line}: from {source} import {n}" for line, source, names in _imports(name)
           if source != name for n in names if _private(n)]
    # names bound to kit modules here: `from . import runs`, `from .. import files as f`, `import cpcl_kit.x`
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            for a in node.names:
                if f"{source}.{a.name}" in MODULES:
                    bound[a.asname or a.name] = f"{source}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "cpcl_kit":
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else "cpcl_kit"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                owner = ".".join([bound[value.id], *chain])
                if owner in MODULES and owner != name:
                    bad.append(f"line {node.lineno}: {owner}.{node.attr}")
    assert not bad, (f"{MODULES[name].relative_to(PKG.parent)} uses private names of other modules "
                     f"(make them public where they belong, or move the code):\n" + "\n".join(bad))


def test_the_checks_see_what_they_check():
    """The parsing finds relative, absolute, module-level and in-function imports."""
    found = {t for _, t, _ in _imports("cpcl_kit.engine.tblog")}
    assert "cpcl_kit.method.scenes" in found  # imported inside Board.pseudo_labels
    assert "cpcl_kit.files" in {t for _, t, _ in _imports("cpcl_kit.engine.train")}  # `from .. import files`
    assert _resolve("cpcl_kit.data", ast.parse("from .build import x").body[0]) == "cpcl_kit.data.build"
