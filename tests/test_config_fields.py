"""Every Config field refuses bad values before anything loads, with one line naming the field.

The cases are generated from the dataclass: every field must have an entry in ``BAD`` (a field added
later without one fails ``test_every_field_has_bad_values``), and each entry is thrown at the field
through the three ways a value arrives: ``--set field=value`` on the CLI (exit 2, one stderr line),
a notebook parameter (``teach.notebook.notebook_config``, the first cell of every notebook) and a saved
config.json (``load_config_dict``), both a ``KitError``.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from cpcl_kit import cli, config, limits
from cpcl_kit.config import Config, load_config_dict, make_config
from cpcl_kit.errors import KitError
from cpcl_kit.teach.notebook import notebook_config

NAN, INF = math.nan, math.inf

# Values just past what this machine holds (limits.MEMORY), on the smoke preset: crops of 64 px, two
# nets, 64 px scenes and pretraining images. Computed, so that they are out of bounds on any machine.
M = limits.MEMORY
SIDE = limits.MAX_SIDE + 1
PX = 64 * 64
TOO = {
    "head_channels": config.LIMITS["head_channels"].hi + 1,
    "num_workers": config.LIMITS["num_workers"].hi + 1,
    "batch_size": M // (limits.PIXEL_BYTES * PX) + 1,
    "unlabeled_batch_size": M // (limits.PIXEL_BYTES * PX * 2) + 1,
    "scenes": M // (limits.SCENE_PIXEL_BYTES * PX) + 1,
    "cutmix_boxes": M // (limits.BOX_PIXEL_BYTES * PX * 4) + 1,
    "pretrain_size": math.isqrt(M // (3 * limits.pretrain_images(400, 64))) + 1,  # smoke: 400 steps of 64
    "pretrain_batch": M // (PX * limits.PIXEL_BYTES) + 1,
}

# field: (Python values, --set texts), all refused on the smoke preset. A Python value of another
# type than the field's is a type error; a text is parsed first, so the texts are what parses but
# is out of range, or does not parse.
BAD: dict[str, tuple[list, list[str]]] = {
    "method": (["fixmatch", 3], ["fixmatch"]),
    "dataset": (["coco", None], ["coco"]),
    "data_root": ([3, "/data/VOC2012"], ["/data/VOC2012"]),  # the digit scenes take no data root
    # only a folder data set names its classes (the smoke preset trains the digit scenes)
    "class_names": ([("a", "b"), ("a",), 3, ("a", 2)], ["a,b", "a"]),
    "labeled": (["abc", "0", "2/1", 0.5], ["abc", "0", "3/2", "-1"]),
    "labeled_list": ([3, "/lists/l.txt"], ["/lists/l.txt"]),
    "unlabeled_list": ([3, "/lists/u.txt"], ["/lists/u.txt"]),
    "seed": ([-1, 1.5, "x", True, 2 ** 32, 12345678901234567890], ["-1", "1.5", "x", "12345678901234567890"]),
    "backbone": (["vgg16", 18], ["vgg16"]),
    "output_stride": ([4, 32, 16.0], ["4", "32", "x"]),
    "dilation": (["multigrid", None], ["multigrid"]),
    "head_channels": ([0, -8, 1.5, TOO["head_channels"]], ["0", "-8", "wide", str(TOO["head_channels"])]),
    "backbone_weights": ([3, True], ["/nowhere/resnet.pth"]),  # a file that is not there (train refuses)
    "pretrain_source": (["emnist", 1], ["emnist"]),
    "pretrain_steps": ([0, -1, NAN], ["0", "nan"]),
    "pretrain_size": ([8, "big", TOO["pretrain_size"]], ["8", "big", str(TOO["pretrain_size"])]),
    "pretrain_batch": ([1, 0, TOO["pretrain_batch"]], ["1", "two", str(TOO["pretrain_batch"])]),
    "crop": ([3, 31, 0, -64, 64.5, NAN, SIDE], ["3", "31", "0", "nan", str(SIDE)]),
    "crop_pad": (["center", None], ["center"]),
    "scales": (["abc", (0.5, -1.0), (0.0,), (1.0, NAN), 1.0, ("a",), (0.0001,), (1.0, 17.0)],
               ["abc", "0.5,-1", "0", "1,inf", "0.0001", "1,100"]),
    "flip": (["maybe", 1, None], ["maybe", "2"]),
    "colour_aug": (["maybe", 0], ["maybe"]),
    "batch_size": ([1, 0, -4, 2.5, TOO["batch_size"]], ["1", "0", "nan", str(TOO["batch_size"])]),
    "unlabeled_batch_size": ([1, 0, TOO["unlabeled_batch_size"]], ["1", "x", str(TOO["unlabeled_batch_size"])]),
    "num_workers": ([-1, 0.5, TOO["num_workers"]], ["-1", "all", str(TOO["num_workers"])]),
    "n_train_scenes": ([0, -5, 1e9, TOO["scenes"]], ["0", "many", str(TOO["scenes"])]),
    "n_val_scenes": ([0, "x", TOO["scenes"]], ["0", "-3", str(TOO["scenes"])]),
    "scene_size": ([4, 0, NAN, SIDE], ["4", "0", str(SIDE)]),
    "digits_per_scene": ([(2, 1), (-1, 1), (1,), (1, 2, 3), (1.5, 2), "1", (1, 65)],
                         ["2,1", "-1,1", "1", "a,b", "1,1000000000"]),
    "digit_px": ([(4, 8), (40, 80), (50, 40), (40,)], ["4,8", "40,80", "50,40", "x"]),
    "void_band": ([-1, 5, 1.5], ["-1", "5"]),
    "iterations": ([0, -10, INF, 10.5], ["0", "-10", "inf", "1e3"]),
    "optimizer": (["rmsprop", None], ["rmsprop"]),
    "lr": ([NAN, INF, -INF, 0, -0.1, "fast", None, 1e300, 1e38], ["nan", "inf", "0", "-0.1", "fast", "1/0", "1e300"]),
    "momentum": ([NAN, -0.1, 1.0, 1.5], ["nan", "-0.1", "1", "2"]),
    "weight_decay": ([NAN, -1e-4, INF, 1e300], ["nan", "-1e-4", "inf", "1e39"]),
    "warmup_iters": ([-1, 2.5], ["-1", "x"]),
    "poly_power": ([NAN, -0.9], ["nan", "-0.9"]),
    "unsup_weight": ([NAN, INF, -1.0], ["nan", "inf", "-1"]),
    "sup_only_iters": ([-1, NAN], ["-1", "nan"]),
    "rampup_iters": ([-1, 0.5], ["-1", "x"]),
    "union_rule": (["vote", 1], ["vote"]),
    "reweight": (["maybe", None], ["maybe"]),
    "weight_scope": (["image"], ["image"]),
    "inter_norm": (["none"], ["none"]),
    "targets": ([("inter",), ("union", "inter"), ("a", "b"), "inter;union", (1, 2)], ["inter", "union,inter", "a,b"]),
    "teacher_bn": (["frozen"], ["frozen"]),
    "pseudo_void_band": ([-1, NAN, 65], ["-1", "x", "1000000000"]),  # wider than the 64 px crop
    "cutmix_boxes": ([-1, 1.5, TOO["cutmix_boxes"]], ["-1", "x", str(TOO["cutmix_boxes"])]),
    "student_aug": (["elastic"], ["elastic"]),
    "sup_loss": (["focal", None], ["focal"]),
    "eval_crop": ([0, 3, -512, 64.5, SIDE], ["0", "3", "-512", "x", str(SIDE)]),
    "eval_stride": ([0, -0.5, 1.5, NAN], ["0", "-0.5", "1.5", "nan"]),
    "eval_branch": (["3", 1], ["3", "both"]),
    "device": (["gpu", "cuda:x", 0, None, "meta", "cuda:99999"], ["gpu", "cuda:", "tpu", "meta"]),
    "amp": (["fp8", None], ["fp8"]),
    "channels_last": (["maybe", 2], ["maybe"]),
    "cudnn_benchmark": (["maybe"], ["maybe"]),
    "net_threads": (["maybe", 2], ["maybe"]),
    "sync_bn": (["maybe"], ["maybe"]),
    "log_every": ([0, -1, 2.5], ["0", "x"]),
    "checkpoint_every": ([0, NAN], ["0", "-1"]),
    "eval_every": ([-1, 2.5, NAN], ["-1", "x"]),
    "tensorboard": (["maybe", 2], ["maybe"]),
    "tb_image_every": ([-5, None], ["-5", "often"]),
    "preset": (["huge", 3], ["huge", "voc"]),  # --set preset=voc would relabel a smoke run
}

FIELDS = [f.name for f in dataclasses.fields(Config)]
PY_CASES = [(name, v) for name in FIELDS for v in BAD.get(name, ([], []))[0]]
CLI_CASES = [(name, t) for name in FIELDS for t in BAD.get(name, ([], []))[1]]


def _names(message: str, field: str) -> bool:
    """One line that starts with the field's name (the argument the user gave)."""
    return "\n" not in message.strip() and re.match(rf"{field}\b", message.strip()) is not None


def test_every_field_has_bad_values():
    missing = [n for n in FIELDS if n not in BAD or not BAD[n][0] or not BAD[n][1]]
    assert not missing, (f"Config fields without bad values in tests/test_config_fields.py BAD: {missing}; "
                         f"add Python values and --set texts that each must refuse")
    assert not set(BAD) - set(FIELDS), f"BAD names fields Config no longer has: {set(BAD) - set(FIELDS)}"


def test_the_bad_values_are_valid_nowhere_else():
    """The good defaults pass the same checks, so each case fails because of its bad value."""
    for preset in ("smoke", "demo", "benchmark", "voc", "cityscapes"):
        cfg = make_config(preset)
        assert load_config_dict(cfg.to_dict()) == cfg
    assert notebook_config("smoke", needs="model").preset == "smoke"


# Notebook parameters where None means "the preset's own" (notebook_config's dataset), not a bad value.
NOTEBOOK_UNSET = [("dataset", None)]
NB_CASES = [c for c in PY_CASES if c not in NOTEBOOK_UNSET]


@pytest.mark.parametrize("name, value", NB_CASES, ids=[f"{n}={v!r}" for n, v in NB_CASES])
def test_notebook_parameter_is_refused_naming_the_field(name, value):
    with pytest.raises(KitError) as e:
        if name == "preset":
            notebook_config(value, needs="model")
        else:
            notebook_config("smoke", needs="model", **{name: value})
    assert _names(str(e.value), name), str(e.value)


@pytest.mark.parametrize("name, value", PY_CASES, ids=[f"{n}={v!r}" for n, v in PY_CASES])
def test_saved_config_value_is_refused_naming_the_field(name, value):
    saved = {**make_config("smoke").to_dict(), name: value}
    with pytest.raises(KitError) as e:
        load_config_dict(saved)
    assert _names(str(e.value), name), str(e.value)


@pytest.mark.parametrize("name, text", CLI_CASES, ids=[f"{n}={t}" for n, t in CLI_CASES])
def test_set_on_the_cli_is_one_line_exit_2(name, text, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--preset", "smoke", "--set", f"{name}={text}", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert _names(err.removeprefix("error: "), name), err
    assert not (out / "metrics.json").exists() and not (out / "checkpoint.pt").exists()


def test_the_backbone_choices_are_the_backbones_the_model_builds():
    from cpcl_kit import constants
    from cpcl_kit.nets import deeplab

    assert constants.BACKBONES == deeplab.BACKBONES
