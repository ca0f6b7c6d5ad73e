"""The data sets and methods the kit trains, each described once.

A data set is a ``DatasetEntry`` (its classes, palette, readers, class weights, what the doctor
checks), a method a ``MethodEntry`` (its step, how many nets, whether it reads unlabeled images).
``register_dataset`` and ``register_method`` add one; the config's checks, the CLI's choices, the
data builder, the training loop, the doctor, the ablation grids and the tests all read this table,
so nothing else branches on a data set's or a method's name. docs/extending.md adds one of each
from a file of one's own.

This module sits in the bottom layer and imports nothing of the kit above it. The kit's own
entries are registered by ``cpcl_kit.data.catalog`` and ``cpcl_kit.method.steps``; they are
imported by name on the first lookup (as plugins are), so that a bare ``import cpcl_kit.config``
stays light, and so are the files listed in ``$CPCL_KIT_PLUGINS`` (``load_plugin`` sets it), so a
process that a run starts (a grid's worker) knows the same entries as the one that started it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import KitError

# The modules that register the kit's own entries, imported on the first lookup.
BUILTIN_MODULES = ("cpcl_kit.data.catalog", "cpcl_kit.method.steps")
# Files of one's own entries (os.pathsep-separated), loaded on the first lookup in every process.
PLUGINS_ENV = "CPCL_KIT_PLUGINS"


@dataclass(frozen=True)
class DatasetEntry:
    """One data set.

    classes: the class names, index = class id; None when each run names its own (a folder's
    classes.txt, read by ``read_classes`` into the run's ``class_names``).
    build: ``build(cfg) -> data.build.DataBundle`` for a data set made in memory; else
    splits: ``splits(root, labeled=, labeled_list=, unlabeled_list=, seed=) -> (labeled, unlabeled, val)``,
    lists of (image path, mask path or None) that the kit reads, augments and batches.
    check: ``check(root) -> str``: what the doctor reports as found (raises KitError when the data is
    not there). palette: ``palette() -> uint8 [256, 3]``, the RGB colour of each label value of its
    label images (None: the kit's own palette). class_weights:
    per-class weights of the OHEM loss (None: unweighted). metrics: ``metrics(per_class_iou) -> dict``,
    extra numbers of the data set's evaluation. preset: the CLI's preset for it when --preset is not
    given; paper_preset: the paper recipe its deviations are measured against. defaults: settings
    that follow the data set when the user does not give them. generated: made in memory from the
    settings (no data_root, no split lists). backbone: the name of the kit's backbone pretrained for
    it (``backbone_weights=<name>``), if any."""

    name: str
    classes: tuple[str, ...] | None = None
    build: Callable | None = None
    splits: Callable | None = None
    check: Callable | None = None
    read_classes: Callable | None = None
    palette: tuple | None = None
    class_weights: tuple[float, ...] | None = None
    metrics: Callable | None = None
    preset: str = "smoke"
    paper_preset: str = "voc"
    defaults: dict = field(default_factory=dict)
    generated: bool = False
    backbone: str | None = None
    about: str = ""

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)


@dataclass(frozen=True)
class MethodEntry:
    """One method: ``step(nets, batch, cfg, lam, gen, all_reduce=None, par=each) -> StepOut``
    (method.steps); ``nets``: how many nets it trains (1 or 2); ``unlabeled``: whether its batches
    carry unlabeled images; ``paper_note(cfg) -> str | None``: how its recipe relates to the paper's,
    recorded in a paper-preset run's deviations."""

    name: str
    step: Callable
    nets: int = 2
    unlabeled: bool = True
    paper_note: Callable | None = None
    about: str = ""


_DATASETS: dict[str, DatasetEntry] = {}
_METHODS: dict[str, MethodEntry] = {}
_loaded = False
_OWN = " (one of your own: load its file first, --plugin FILE or registry.load_plugin)"


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: the modules below call register_* while they import
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for path in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        _import_file(Path(path))


def _check_name(kind: str, name, table: dict, replace: bool) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise KitError(f"{kind}: expected a name of letters, digits and _, got {name!r}")
    if name in table and not replace:
        raise KitError(f"{kind}: {name!r} is registered already (pass replace=True to redefine it)")


def register_dataset(entry: DatasetEntry, replace: bool = False) -> DatasetEntry:
    """Add ``entry`` to the data sets; returns it."""
    _check_name("dataset", entry.name, _DATASETS, replace)
    if (entry.build is None) == (entry.splits is None):
        raise KitError(f"dataset {entry.name!r}: give build (made in memory) or splits (files), one of them")
    if entry.classes is None and entry.read_classes is None:
        raise KitError(f"dataset {entry.name!r}: give its classes, or read_classes to read them from its root")
    _DATASETS[entry.name] = entry
    return entry


def register_method(name: str, *, nets: int = 2, unlabeled: bool = True, paper_note: Callable | None = None,
                    replace: bool = False):
    """Decorator: register a step function as method ``name`` (timm's ``register_model``, for steps)."""
    if nets not in (1, 2):
        raise KitError(f"method {name!r}: nets: expected 1 or 2, got {nets!r}")

    def add(step: Callable) -> Callable:
        _check_name("method", name, _METHODS, replace)
        _METHODS[name] = MethodEntry(name, step, nets, unlabeled, paper_note, (step.__doc__ or "").strip())
        return step

    return add


def dataset(name: str) -> DatasetEntry:
    """The entry of data set ``name``; a KitError naming the known ones when there is none."""
    _load()
    if name not in _DATASETS:
        raise KitError(f"dataset: unknown value {name!r}, expected one of {', '.join(_DATASETS)}{_OWN}")
    return _DATASETS[name]


def method(name: str) -> MethodEntry:
    """The entry of method ``name``; a KitError naming the known ones when there is none."""
    _load()
    if name not in _METHODS:
        raise KitError(f"method: unknown value {name!r}, expected one of {', '.join(_METHODS)}{_OWN}")
    return _METHODS[name]


def dataset_names() -> tuple[str, ...]:
    _load()
    return tuple(_DATASETS)


def method_names() -> tuple[str, ...]:
    _load()
    return tuple(_METHODS)


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise KitError(f"{path}: plugin file not found (expected a .py file that registers data sets or methods)")
    spec = importlib.util.spec_from_file_location(f"cpcl_kit_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (SyntaxError, ImportError) as e:  # the file's own errors in one line; any other keeps its traceback
        where = f", line {e.lineno}" if isinstance(e, SyntaxError) and e.lineno else ""
        raise KitError(f"{path}{where}: the plugin cannot be loaded ({type(e).__name__}: {e.msg if isinstance(e, SyntaxError) else e})") from None


def load_plugin(path) -> None:
    """Import the Python file ``path`` (which registers data sets or methods), here and in every
    process this one starts (``$CPCL_KIT_PLUGINS``)."""
    path = Path(path).expanduser().resolve()
    _load()
    listed = [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]
    if str(path) in listed:
        return
    _import_file(path)
    os.environ[PLUGINS_ENV] = os.pathsep.join([*listed, str(path)])
