"""The registry is the one place a data set or a method is described: every entry is checked here
(cases generated from the registry itself), and no module outside data/ and method/ branches on a
data set's or a method's name."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from cpcl_kit import cli, registry
from cpcl_kit.config import PAPER_PRESETS, PRESETS, make_config
from cpcl_kit.errors import KitError

PKG = Path(__file__).resolve().parents[1] / "cpcl_kit"
DATASETS = registry.dataset_names()
METHODS = registry.method_names()
# Where branching on the names is the job: the entries themselves and the readers of the paper data
# sets' own layouts.
OWNERS = ("data", "method")


def _name_branches(path: Path, base: Path = PKG.parent) -> list[str]:
    """Comparisons (==, !=, in) and subscripts of a dataset/method value with a registered name."""
    names = set(DATASETS) | set(METHODS)
    found = []

    def about(node) -> bool:  # cfg.dataset, dataset, cfg.method, method, ...
        key = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        return key in ("dataset", "method")

    def named(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(named(e) for e in node.elts)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(about(s) for s in sides) and any(named(s) for s in sides):
                found.append(f"{path.relative_to(base)}:{node.lineno}")
        elif isinstance(node, ast.Subscript) and about(node.slice) and isinstance(node.value, ast.Dict) \
                and any(named(k) for k in node.value.keys if k is not None):
            found.append(f"{path.relative_to(base)}:{node.lineno}")
    return found


def test_no_branch_on_a_data_set_or_method_name_outside_data_and_method():
    files = [p for p in sorted(PKG.rglob("*.py")) if p.relative_to(PKG).parts[0] not in OWNERS]
    assert [b for p in files for b in _name_branches(p)] == []


def test_the_branch_finder_finds_branches(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('if cfg.dataset == "digits": pass\nn = 1 if method != "supervised" else 2\n'
                 'w = {"voc": 1}[cfg.dataset]\nok = cfg.dataset in ("voc", "cityscapes")\nfine = cfg.lr == 0.1\n')
    assert sorted(_name_branches(f, tmp_path)) == ["x.py:1", "x.py:2", "x.py:3", "x.py:4"]


@pytest.mark.parametrize("name", DATASETS)
def test_each_data_set_entry_is_whole(name):
    entry = registry.dataset(name)
    assert entry.preset in PRESETS and entry.paper_preset in PAPER_PRESETS
    assert cli.default_preset(name) == entry.preset
    assert (entry.build is None) != (entry.splits is None)
    if entry.classes is not None:
        assert len(set(entry.classes)) == len(entry.classes) >= 2
    if entry.class_weights is not None:
        assert len(entry.class_weights) == entry.num_classes
    if entry.palette is not None:
        pal = entry.palette()
        assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert name in registry.dataset_names() and entry.about
    if entry.generated:  # made in memory: a config of it needs nothing else
        cfg = make_config(entry.preset, dataset=name)
        assert cfg.num_classes == entry.num_classes
        with pytest.raises(KitError, match=f"data_root: .* trains on {entry.about}"):
            make_config(entry.preset, dataset=name, data_root="somewhere")
    else:  # on disk: the doctor's check names a missing root in one line
        with pytest.raises(KitError):
            entry.check("/nonexistent-root")


@pytest.mark.parametrize("name", METHODS)
def test_each_method_entry_builds_its_nets_and_steps(name):
    from cpcl_kit.engine.synthetic import images_per_step, synthetic_batch
    from cpcl_kit.nets.deeplab import build_nets

    entry = registry.method(name)
    cfg = make_config("smoke", method=name, backbone_weights="none", crop=32, head_channels=8)
    nets = build_nets(cfg)
    assert len(nets) == entry.nets
    assert images_per_step(cfg) == cfg.batch_size + (2 * cfg.unlabeled_batch_size if entry.unlabeled else 0)
    out = entry.step(nets, synthetic_batch(cfg, torch.device("cpu")), cfg, 1.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and len(out.per_net) == entry.nets
    out.loss.backward()
    assert all(p.grad is not None for net in nets for p in net.parameters() if p.requires_grad)
    assert set(out.parts) >= {f"sup{k + 1}" for k in range(entry.nets)}
    if entry.unlabeled:
        assert {"unsup1", "unsup2"} <= set(out.parts) and out.labels is not None
    assert entry.about  # its docstring: what the method is


def test_a_name_is_registered_once():
    step = registry.method("cpcl").step
    with pytest.raises(KitError, match="'cpcl' is registered already"):
        registry.register_method("cpcl")(step)
    with pytest.raises(KitError, match="method: expected a name of letters"):
        registry.register_method("my method")(step)
    with pytest.raises(KitError, match="give build .* or splits"):
        registry.register_dataset(registry.DatasetEntry("mine", classes=("a", "b")))
    with pytest.raises(KitError, match="method: unknown value 'mine', expected one of .*--plugin FILE"):
        make_config("smoke", method="mine")
