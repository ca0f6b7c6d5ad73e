"""The paper presets against the official recipe: backbone, dilation, crop padding and the weights
they need to start."""

from __future__ import annotations

import warnings

import pytest

from cpcl_kit import config as C
from cpcl_kit.config import (PAPER_PRESETS, PRESETS, RandomInitWarning, check_ready_to_train, load_config_dict,
                             make_config)
from cpcl_kit.errors import KitError

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
            assert check_ready_to_train(make_config(preset)).backbone_weights is None


def test_train_refuses_before_writing_anything(tmp_path):
    from cpcl_kit.train import train

    with pytest.raises(KitError, match="^backbone_weights: the voc preset"):
        train(make_config("voc"), out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
