"""The paper presets against the official recipe: backbone, dilation, crop padding, the weights they
need to start, and the list of what still differs (written into every run's config.json)."""

from __future__ import annotations

import json
import warnings
from dataclasses import fields
from pathlib import Path

import pytest

from cpcl_kit import config as C
from cpcl_kit.config import (PAPER_PRESETS, PRESETS, Config, RandomInitWarning, check_ready_to_train,
                             load_config_dict, make_config)
from cpcl_kit.deviations import CPS_OWN_RECIPE, DEVIATIONS, PAPER_DEVIATIONS, RECIPE_FIELDS, deviations
from cpcl_kit.errors import KitError

ROOT = Path(__file__).resolve().parents[1]
CPU_PRESETS = [p for p in PRESETS if p not in PAPER_PRESETS]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_pick_official_or_todays_network_and_padding(preset):
    cfg = make_config(preset)
    if preset in PAPER_PRESETS:
        assert (cfg.backbone, cfg.dilation, cfg.crop_pad) == ("resnet50_v1c", "official", "centre")
    else:  # the CPU presets keep what they did before these options existed
        assert (cfg.dilation, cfg.crop_pad) == ("torchvision", "random")


def test_a_config_saved_before_the_options_loads_as_it_ran():
    saved = {k: v for k, v in make_config("voc").to_dict().items() if k not in ("dilation", "crop_pad")}
    saved["backbone"] = "resnet50"
    cfg = load_config_dict(saved)
    assert (cfg.dilation, cfg.crop_pad) == ("torchvision", "random")


@pytest.mark.parametrize("key, choices", [("dilation", C.DILATIONS), ("crop_pad", C.CROP_PADS)])
def test_new_choices_are_checked(key, choices):
    for value in choices:
        assert getattr(make_config("smoke", **{key: value}), key) == value
    with pytest.raises(KitError, match=rf"^{key}: unknown value 'nope', expected one of {', '.join(choices)}$"):
        make_config("smoke", **{key: "nope"})


def test_backbone_weights_none_is_told_from_not_given():
    assert make_config("voc").backbone_weights is None
    assert make_config("voc", overrides={"backbone_weights": "none"}).backbone_weights == "none"
    assert make_config("voc", overrides={"backbone_weights": "None"}).backbone_weights == "none"
    assert make_config("voc", backbone_weights="none").backbone_weights == "none"
    for unset in ("", "null"):
        assert make_config("voc", overrides={"backbone_weights": unset}).backbone_weights is None
    # other optional fields still read "none" as unset
    assert make_config("voc", overrides={"eval_crop": "none"}).eval_crop is None


def test_paper_presets_need_weights_to_train_but_not_to_look_at():
    for preset in PAPER_PRESETS:
        cfg = make_config(preset)  # inspecting a paper config works
        with pytest.raises(KitError) as e:
            check_ready_to_train(cfg)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"backbone_weights: the {preset} preset")
        for needed in ("--set backbone_weights=<file>", "resnet50_v1c.pth", "resnet101_v1c.pth",
                       "CPS/TorchSemiSeg", "torchvision ImageNet", "backbone_weights=none"):
            assert needed in msg
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_ready_to_train(make_config(preset, backbone_weights="/w/resnet50_v1c.pth"))
        with pytest.warns(RandomInitWarning, match="random initialisation"):
            check_ready_to_train(make_config(preset, backbone_weights="none"))
    for preset in CPU_PRESETS:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_ready_to_train(make_config(preset)).backbone_weights == "digits"


def test_train_refuses_before_writing_anything(tmp_path):
    from cpcl_kit.engine.train import train

    with pytest.raises(KitError, match="^backbone_weights: the voc preset"):
        train(make_config("voc"), out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_random_init_on_purpose_trains_and_is_recorded(tmp_path):
    """A paper-preset run (on digit scenes, tiny, to run here) with backbone_weights=none."""
    from cpcl_kit.engine.train import train

    cfg = make_config("voc", dataset="digits", backbone="resnet18", backbone_weights="none", head_channels=8,
                      crop=32, scales=(1.0,), n_train_scenes=8, n_val_scenes=2, labeled="1/2", iterations=2,
                      batch_size=2, unlabeled_batch_size=2, log_every=1, checkpoint_every=2, eval_crop=None,
                      num_workers=0)
    with pytest.warns(RandomInitWarning):
        train(cfg, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_weights"] == "none"
    dev = saved["deviations_from_paper"]
    assert set(PAPER_DEVIATIONS) <= set(dev) and "random initialisation on purpose" in dev["backbone_weights"]
    for changed in ("backbone", "head_channels", "crop", "scales", "batch_size", "eval_crop"):
        assert dev[changed].startswith("changed to "), changed
    assert "dilation" not in dev and "crop_pad" not in dev  # still the official ones


# ------------------------------------------------------------------------------ deviations


def test_every_deviation_entry_names_a_setting():
    names = {f.name for f in fields(Config)}
    assert set(DEVIATIONS) <= names
    assert not set(PAPER_DEVIATIONS) & set(RECIPE_FIELDS)  # no clash with "changed" entries


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_cpu_presets_list_exactly_the_settings_that_deviate(preset):
    cfg = make_config(preset)
    paper = make_config("voc")
    expected = {k for k in DEVIATIONS if getattr(cfg, k) != getattr(paper, k)}
    assert set(deviations(cfg)) == expected
    # the texts that quote numbers are true of the presets that carry them
    dev = deviations(cfg)
    if "unlabeled_batch_size" in dev:
        assert dev["unlabeled_batch_size"].startswith(f"{cfg.unlabeled_batch_size} unlabeled")
    if "batch_size" in dev:
        assert f"{cfg.batch_size} labeled" in dev["batch_size"] and preset in dev["batch_size"]
    assert "output_stride" not in dev  # the CPU presets run at the paper's 16
    assert str(cfg.head_channels) in dev["head_channels"]
    # "(a quarter in demo and benchmark, a third in smoke)": the share named beside each preset is its own
    share = {0.25: "a quarter", 1 / 3: "a third"}[cfg.sup_only_iters / cfg.iterations]
    clause = dev["sup_only_iters"].split(f"{share} in ", 1)[1].split(",")[0].split(")")[0]
    assert preset in clause.split(" and ")


def test_the_output_stride_text_is_true_where_it_shows():
    dev = deviations(make_config("demo", output_stride=8))
    assert dev["output_stride"].startswith("output stride 8 instead of 16")


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_list_the_paper_deviations(preset):
    assert deviations(make_config(preset, backbone_weights="w.pth")) == PAPER_DEVIATIONS
    dev = deviations(make_config(preset, backbone_weights="w.pth", backbone="resnet50", amp="off"))
    assert dev["backbone"] == "changed to 'resnet50'; the preset (official recipe) uses 'resnet50_v1c'"
    assert "amp" in dev  # a PAPER_DEVIATIONS entry: it describes the preset, not an override


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_cps_baseline_names_the_cps_repository_recipe(preset):
    dev = deviations(make_config(preset, method="cps", backbone_weights="w.pth"))
    text = dev["method"]
    assert "CPCL's recipe" in text and "like-for-like" in text
    own = CPS_OWN_RECIPE[make_config(preset).dataset]
    assert own["source"] in text and own["lr"] in text and own["unsup_weight"] in text
    assert "supervised" in deviations(make_config(preset, method="supervised", backbone_weights="w.pth"))["method"]


def test_cps_own_recipe_cites_the_files_read():
    assert CPS_OWN_RECIPE["voc"]["source"].startswith("exp.voc/voc8.res50v3+.CPS+CutMix/")
    assert CPS_OWN_RECIPE["cityscapes"]["source"].startswith("exp.city/city8.res50v3+.CPS+CutMix/")
    for recipe in CPS_OWN_RECIPE.values():
        assert {"lr", "batch", "iterations", "unsup_weight", "crop", "sup_loss"} <= set(recipe)


def test_docs_show_every_paper_deviation_and_the_cps_recipe():
    recipes = (ROOT / "docs" / "recipes.md").read_text()
    real = recipes[recipes.index("## Real data sets"):]
    for needle in ("resnet50_v1c.pth", "resnet101_v1c.pth", "backbone_weights=none", "dilation=official",
                   "crop_pad=centre"):
        assert needle in real, needle
    section = real[real.index("## Differences from the official code"):]
    for key in PAPER_DEVIATIONS:
        assert f"`{key}`" in section, key
    for needle in ("CPS+CutMix", "lr 0.01", "lr 0.02", "39,338", "44,525", "CPS_OWN_RECIPE"):
        assert needle in section, needle


def test_config_defaults_are_the_voc_preset():
    """``Config()`` claims preset "voc": it is that preset, field for field, and deviates from the
    official recipe only where every paper-preset run does."""
    assert Config() == make_config("voc") and Config().preset == "voc"
    assert deviations(Config()) == PAPER_DEVIATIONS
    cfg = Config()
    assert (cfg.dataset, cfg.backbone, cfg.dilation, cfg.crop_pad, cfg.crop, cfg.eval_crop) == \
        ("voc", "resnet50_v1c", "official", "centre", 512, 512)


def test_a_config_saved_before_a_field_existed_loads_with_its_old_value():
    """load_config_dict fills a field the saved dict lacks from ADDED_FIELDS, not from today's default."""
    saved = make_config("smoke").to_dict()
    for name, old in C.ADDED_FIELDS.items():
        without = {k: v for k, v in saved.items() if k != name}
        assert getattr(load_config_dict(without), name) == old


def test_cli_preset_follows_the_dataset(tmp_path, capsys):
    from cpcl_kit import cli

    assert [cli.default_preset(d) for d in (None, "digits", "voc", "cityscapes")] == \
        ["smoke", "smoke", "voc", "cityscapes"]
    # a VOC tree without --preset gets the voc recipe (which then asks for its backbone file), not the
    # smoke preset's digit backbone
    rc = cli.main(["train", "--dataset", "voc", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 2 and capsys.readouterr().err.startswith("error: backbone_weights: the voc preset trains")
    rc = cli.main(["train", "--set", "dataset=cityscapes", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")])
    assert rc == 2 and "the cityscapes preset trains" in capsys.readouterr().err
    assert "--dataset voc" in cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
