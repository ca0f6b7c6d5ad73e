"""The paper presets against the official recipe: backbone, dilation and crop padding."""

from __future__ import annotations

import pytest

from cpcl_kit import config as C
from cpcl_kit.config import PAPER_PRESETS, PRESETS, load_config_dict, make_config
from cpcl_kit.errors import KitError


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
