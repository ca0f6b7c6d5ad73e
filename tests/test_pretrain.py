"""Backbone pretraining (pretrain.py): disjoint from the scenes, deterministic, cached, loadable."""

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cpcl_kit import cli
from cpcl_kit.config import PRESETS, make_config
from cpcl_kit.data import digits
from cpcl_kit.data.digits import DigitScenes, SceneSpec
from cpcl_kit.engine.trainer import nets_for
from cpcl_kit.errors import KitError
from cpcl_kit.nets import pretrain

SCENE_POOL = np.concatenate(digits.digit_pools())
# A tiny pretraining spec (20 steps of 16 at 32 px): the kit ships no file for it, so it trains.
TINY_SETS = dict(pretrain_steps=20, pretrain_size=32, pretrain_batch=16)
TINY = pretrain.spec_for(make_config("smoke", **TINY_SETS))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny spec's weights, trained once into a fresh cache folder: (cache dir, weights path)."""
    cache = tmp_path_factory.mktemp("pretrain-cache")
    return cache, pretrain.weights_path(TINY, cache, progress=False)


@pytest.mark.parametrize("preset", [p for p, v in PRESETS.items() if v.get("dataset") == "digits"])
def test_every_cpu_preset_starts_from_the_shipped_backbone(preset, monkeypatch):
    monkeypatch.setattr(pretrain, "train_backbone", lambda *a, **k: pytest.fail("the shipped file needs no training"))
    cfg = make_config(preset)
    assert cfg.backbone_weights == pretrain.NAMED_WEIGHTS == "digits"
    path = pretrain.resolve_backbone_weights(cfg)
    assert Path(path).parent == pretrain.SHIPPED_DIR == Path(pretrain.__file__).parent.parent / "weights"
    report = pretrain.read_report(path)
    # the report records the whole sha256 of the file it ships beside
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == report["sha256"]
    assert report["spec"] == dataclasses.asdict(pretrain.spec_for(cfg)) and report["key"] == pretrain.spec_key(pretrain.spec_for(cfg))
    state = torch.load(path, weights_only=True)
    assert "layer4.1.bn2.running_var" in state and not any(k.startswith("fc.") for k in state)
    assert pretrain.shipped_path(TINY) is None


def test_pretraining_source_digits_are_never_scene_digits():
    assert not set(digits.pretrain_pool()) & set(SCENE_POOL)
    for source in pretrain.SOURCES:
        for part in ("train", "heldout"):
            bank = pretrain.source_bank(source, part)
            hand = bank.origin[bank.origin >= 0]
            assert set(hand) <= set(digits.pretrain_pool())
            assert (len(hand) > 0) == (source != "printed")
            assert bank.images.shape == (len(bank), 8, 8) and 0 <= bank.images.min() <= bank.images.max() <= 16
    train, held = pretrain.source_bank("handwritten", "train"), pretrain.source_bank("handwritten", "heldout")
    assert not set(train.origin) & set(held.origin)
    assert len(train) + len(held) == len(digits.pretrain_pool())


def _poison(monkeypatch, which: np.ndarray):
    """Relabel the bank digits ``which`` as a class no real digit has (10 -> mask value 11)."""
    real_split = digits._split_pools(digits.POOL_SEED, digits.POOL_VAL_FRACTION, digits.POOL_PRETRAIN_FRACTION)
    images, labels = digits.load_digit_bank()
    labels = labels.copy()
    labels[which] = 10
    monkeypatch.setattr(digits, "_split_pools", lambda *a: real_split)  # pools as without the poison
    monkeypatch.setattr(digits, "load_digit_bank", lambda: (images, labels))
    monkeypatch.setattr(digits, "_MEMORY_CACHE", {})


def test_scenes_never_draw_a_pretraining_digit(monkeypatch):
    # Any pretraining digit drawn into a train or val scene would show up as mask value 11.
    _poison(monkeypatch, digits.pretrain_pool())
    for split in ("train", "val"):
        masks = DigitScenes(split, n=300, spec=SceneSpec(), seed=5).masks
        assert masks.max() <= 10 and masks.max() > 0


def test_pretraining_images_never_draw_a_scene_digit(monkeypatch):
    _poison(monkeypatch, SCENE_POOL)
    for source in pretrain.SOURCES:
        for part in ("train", "heldout"):
            _, labels = pretrain.render(pretrain.source_bank(source, part), 300, 32, 0, True, True)
            assert labels.max() <= 10
    # ...while the transfer test set is made of exactly those digits
    _, labels = pretrain.scene_digit_images(32, 50, 0)
    assert (labels == 11).all()


def test_render_labels_match_the_images():
    images, labels = pretrain.render(pretrain.source_bank("printed", "train"), 110, 32, 1, True, True)
    assert images.shape == (110, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels) <= set(range(11))
    assert np.sum(labels == 0) >= 10  # 1 in 11 is the "no digit" class
    again = pretrain.render(pretrain.source_bank("printed", "train"), 110, 32, 1, True, True)
    assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])


def test_warp_is_deterministic_and_keeps_the_range():
    src = digits.load_digit_bank()[0][:20]
    a, b = pretrain.distort_digits(src, np.random.default_rng(3)), pretrain.distort_digits(src, np.random.default_rng(3))
    assert a.shape == (20, 8, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 16 and not np.array_equal(a, src)


def test_printed_fonts_are_matplotlibs_own():
    fonts = pretrain.printed_fonts()
    assert len(fonts) >= 10 and all(f.suffix == ".ttf" and "mpl-data" in str(f) for f in fonts)
    assert not {f.stem for f in fonts} & {"cmex10", "cmsy10", "cmmi10"}


def test_cache_file_report_and_reuse(tiny, monkeypatch):
    cache, path = tiny
    assert path.parent == cache and path.name == pretrain.weights_name(TINY)
    report = json.loads(pretrain.report_path(path).read_text())
    assert report["key"] == pretrain.spec_key(TINY) and report["steps"] == 20
    assert 0 <= report["heldout_acc"] <= 1 and 0 <= report["scene_digit_acc"] <= 1
    state = torch.load(path, weights_only=True)
    assert "layer4.1.bn2.running_var" in state and not any(k.startswith("fc.") for k in state)

    def boom(*a, **k):
        raise AssertionError("the cached weights should have been reused")

    monkeypatch.setattr(pretrain, "train_backbone", boom)
    assert pretrain.weights_path(TINY, cache) == path
    other = dataclasses.replace(TINY, steps=21)
    assert pretrain.spec_key(other) != pretrain.spec_key(TINY)
    with pytest.raises(AssertionError, match="reused"):  # a changed spec is a new file, trained
        pretrain.weights_path(other, cache)
    assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncated weights", "empty report"])
def test_a_damaged_cache_file_is_trained_again_with_one_line(damage, tiny, tmp_path, monkeypatch, capsys):
    cache, path = tiny
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    pretrain.report_path(copy).write_text(pretrain.report_path(path).read_text())
    if damage == "truncated weights":
        copy.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        pretrain.report_path(copy).write_text("")
    assert not pretrain.intact(copy)
    trained = []
    state, report = torch.load(path, weights_only=True), json.loads(pretrain.report_path(path).read_text())
    monkeypatch.setattr(pretrain, "train_backbone", lambda spec, progress: trained.append(spec) or (state, report))
    assert pretrain.weights_path(TINY, tmp_path, progress=False) == copy and trained == [TINY]
    assert capsys.readouterr().err.strip() == \
        f"cpcl-kit: the cached backbone {copy} (or its report) is damaged; training it again"
    assert pretrain.intact(copy) and copy.read_bytes() == path.read_bytes()
    assert pretrain.weights_path(TINY, tmp_path, progress=False) == copy and len(trained) == 1  # reused now


def test_the_cache_follows_the_environment(monkeypatch, tmp_path):
    from cpcl_kit import constants
    from cpcl_kit.experiments import prepared

    monkeypatch.setenv("CPCL_KIT_CACHE", str(tmp_path / "kit"))
    assert pretrain.default_cache_dir() == tmp_path / "kit" / "pretrain" == prepared.cache_root() / "pretrain"
    monkeypatch.delenv("CPCL_KIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert constants.cache_root() == tmp_path / "xdg" / "cpcl-kit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrain.default_cache_dir() == tmp_path / "home" / ".cache" / "cpcl-kit" / "pretrain"
    # nothing the kit caches lies in the checkout any more
    assert not hasattr(constants, "CACHE_DIR")


def test_same_spec_gives_bitwise_identical_weights(tiny):
    _, path = tiny
    first = torch.load(path, weights_only=True)
    rng_before = torch.get_rng_state()
    state, report = pretrain.train_backbone(TINY, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert first.keys() == state.keys() and all(torch.equal(first[k], state[k]) for k in first)
    assert report["scene_digit_acc"] == pretrain.read_report(path)["scene_digit_acc"]
    # the caller's thread count changes neither the weights nor itself
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        other, report = pretrain.train_backbone(TINY, progress=False)
        assert torch.get_num_threads() == (2 if threads == 1 else 1)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(first[k], other[k]) for k in first) and report["torch_threads"] == 1


def test_named_value_loads_into_both_nets(tiny, monkeypatch):
    cache, path = tiny
    monkeypatch.setattr(pretrain, "DEFAULT_CACHE_DIR", cache)
    state = torch.load(path, weights_only=True)
    nets = nets_for(make_config("smoke", method="cpcl", **TINY_SETS))
    for net in nets:
        assert torch.equal(net.backbone.conv1.weight, state["conv1.weight"])
        assert torch.equal(net.backbone.layer3[1].bn2.running_mean, state["layer3.1.bn2.running_mean"])
    assert pretrain.resolve_backbone_weights(make_config("smoke", **TINY_SETS)) == str(path)


def test_runs_record_the_backbone_they_start_from(tiny, monkeypatch, tmp_path):
    import hashlib

    from cpcl_kit import provenance
    from cpcl_kit.engine.train import train

    cache, path = tiny
    monkeypatch.setattr(pretrain, "DEFAULT_CACHE_DIR", cache)
    imported = provenance.code_version()
    # read once per process: what git would say later (a commit made meanwhile) is not asked
    monkeypatch.setattr(provenance.subprocess, "run", lambda *a, **k: pytest.fail("git asked again"))
    cfg = make_config("smoke", method="supervised", iterations=2, log_every=2, n_train_scenes=32, n_val_scenes=4,
                      **TINY_SETS)
    with pytest.warns(pretrain.OtherInitWarning, match=f"starts from {path.name}.*not from the backbone shipped") as seen:
        metrics = train(cfg, out_dir=tmp_path / "run", progress=False).metrics
    assert len([w for w in seen if w.category is pretrain.OtherInitWarning]) == 1  # one line, once
    assert metrics["code"] == imported and metrics["code"]["commit"]  # the commit that trained it
    got = metrics["backbone_init"]
    assert got == {"backbone_weights": "digits", "file": path.name,
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:12], "shipped": False,
                   "scene_digit_acc": pretrain.read_report(path)["scene_digit_acc"]}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["backbone_init"] == got
    # the shipped backbone: recorded as such, and no line
    with warnings.catch_warnings():
        warnings.simplefilter("error", pretrain.OtherInitWarning)
        shipped = train(dataclasses.replace(cfg, pretrain_steps=400, pretrain_size=64, pretrain_batch=64),
                        progress=False).metrics["backbone_init"]
    assert shipped["shipped"] is True and shipped["sha256"] in pretrain.shipped_hashes()
    assert pretrain.fingerprint(make_config("smoke", backbone_weights="none")) == {"backbone_weights": "none"}


def test_random_init_stays_selectable(monkeypatch):
    monkeypatch.setattr(pretrain, "train_backbone", lambda *a, **k: pytest.fail("no pretraining asked for"))
    cfg = make_config("smoke", backbone_weights="none")
    assert cfg.backbone_weights == "none" and pretrain.resolve_backbone_weights(cfg) == "none"
    (net,) = nets_for(make_config("smoke", method="supervised", backbone_weights="none"))
    assert net.backbone.conv1.weight.std() > 0


def test_bad_settings_are_one_line_kit_errors():
    with pytest.raises(KitError, match="pretrain_source: unknown value 'ink'"):
        make_config("smoke", pretrain_source="ink")
    with pytest.raises(KitError, match="pretrain_steps"):
        make_config("smoke", pretrain_steps="0")
    with pytest.raises(KitError, match="pretrain_size"):
        make_config("smoke", pretrain_size=8)
    with pytest.raises(KitError, match="pretrain_source"):
        pretrain.PretrainSpec(source="ink").check()
    with pytest.raises(KitError, match="dataset 'voc'"):
        pretrain.resolve_backbone_weights(make_config("voc", backbone_weights="digits"))
    with pytest.raises(KitError, match="backbone_weights: file not found: digitz"):
        nets_for(make_config("smoke", method="supervised", backbone_weights="digitz"))
    with pytest.raises(KitError, match="part"):
        pretrain.source_bank("printed", "test")


def test_cli_prints_accuracies_and_path(tiny, capsys, monkeypatch, tmp_path):
    cache, path = tiny
    tiny_sets = [a for k, v in TINY_SETS.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(["pretrain", "--preset", "smoke", "--cache", str(cache), "--quiet", *tiny_sets]) == 0
    out = capsys.readouterr().out
    assert "(cached)" in out and str(path) in out and "scene digits" in out and "%" in out
    assert cli.main(["pretrain", "--preset", "smoke", "--quiet"]) == 0
    assert "(shipped with the kit)" in capsys.readouterr().out
    # --rebuild trains again where a file ships, and says whether this machine made the same bytes
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for f in (path, pretrain.report_path(path)):
        (shipped / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", shipped)
    rebuilt = tmp_path / "rebuilt"
    assert cli.main(["pretrain", "--preset", "smoke", "--cache", str(rebuilt), "--rebuild", "--quiet", *tiny_sets]) == 0
    out = capsys.readouterr().out
    assert "(trained now)" in out and "rebuilt it bit for bit" in out and (rebuilt / path.name).is_file()
    assert cli.main(["pretrain", "--preset", "smoke", "--set", "pretrain_source=ink"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pretrain_source") and "\n" not in err
