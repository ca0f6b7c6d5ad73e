"""A folder of your own data (--dataset folder): its layout, splits, bad trees, every method on it,
and the settings that follow a real data set when a CPU preset trains on it."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from cpcl_kit import cli
from cpcl_kit.config import PRESETS, RandomInitWarning, check_ready_to_train, make_config
from cpcl_kit import registry
from cpcl_kit.constants import IMAGENET_FILES, PAPER_PRESETS, imagenet_file
from cpcl_kit.data import build_data
from cpcl_kit.data.folder import FOLDER_VAL_FRACTION, folder_class_names, folder_pairs, folder_splits
from cpcl_kit.errors import KitError
from cpcl_kit.files import read_class_names

from folder_tree import CLASSES, make_tree


def stems(pairs) -> list[str]:
    return [img.stem for img, _ in pairs]


# ------------------------------------------------------------------------------------ layout, splits


def test_pairs_find_masks_by_name_and_images_without_masks_are_unlabeled(tmp_path):
    root = make_tree(tmp_path / "t", n=6, masked=4)
    train, val = folder_pairs(root)
    assert stems(train) == [f"im{i:02d}" for i in range(6)] and val == []
    assert [m.name if m else None for _, m in train] == ["im00.png", "im01.png", "im02.png", "im03.png", None, None]
    assert folder_class_names(root) == CLASSES


def test_without_val_folder_a_fixed_share_of_masked_images_validates_whatever_the_seed(tmp_path):
    root = make_tree(tmp_path / "t", n=14, masked=10)
    lab0, unl0, val0 = folder_splits(root, seed=0)
    lab3, unl3, val3 = folder_splits(root, seed=3)
    assert stems(val0) == stems(val3) and len(val0) == round(FOLDER_VAL_FRACTION * 10)
    masked = {f"im{i:02d}" for i in range(10)}
    assert set(stems(lab0)) == masked - set(stems(val0))           # every remaining masked image
    assert stems(unl0) == ["im10", "im11", "im12", "im13"]          # the images without masks
    assert not set(stems(val0)) & (set(stems(lab0)) | set(stems(unl0)))


def test_val_folder_is_the_validation_set(tmp_path):
    root = make_tree(tmp_path / "t", n=6, masked=3, val=2)
    lab, unl, val = folder_splits(root)
    assert stems(val) == ["v00", "v01"] and stems(lab) == ["im00", "im01", "im02"]
    assert stems(unl) == ["im03", "im04", "im05"]


def test_fraction_partitions_the_masked_images_by_seed(tmp_path):
    root = make_tree(tmp_path / "t", n=10, masked=10, val=2)
    lab, unl, _ = folder_splits(root, labeled="1/2", seed=0)
    assert len(lab) == 5 and sorted(stems(lab) + stems(unl)) == [f"im{i:02d}" for i in range(10)]
    assert stems(folder_splits(root, labeled="1/2", seed=1)[0]) != stems(lab)


def test_all_masked_and_nothing_unlabeled_shows_the_labeled_images_unlabeled_too(tmp_path):
    root = make_tree(tmp_path / "t", n=4, masked=4, val=1)
    lab, unl, _ = folder_splits(root)
    assert stems(unl) == stems(lab) == ["im00", "im01", "im02", "im03"]


def test_labeled_txt_in_the_root_is_the_split(tmp_path):
    root = make_tree(tmp_path / "t", n=8, masked=6, val=1)
    (root / "labeled.txt").write_text("im01\nim04\n")
    lab, unl, _ = folder_splits(root)
    assert stems(lab) == ["im01", "im04"]
    assert stems(unl) == ["im00", "im02", "im03", "im05", "im06", "im07"]
    (root / "unlabeled.txt").write_text("im06\n")
    assert stems(folder_splits(root)[1]) == ["im06"]


def test_config_counts_classes_from_classes_txt_and_data_names_them(tmp_path):
    root = make_tree(tmp_path / "t")
    cfg = make_config("smoke", dataset="folder", data_root=str(root))
    assert cfg.num_classes == 3 and cfg.labeled == "all"
    data = build_data(cfg)
    assert data.class_names == CLASSES and len(data.val) == 2 and len(data.labeled) == 6


@pytest.mark.parametrize("text, problem", [
    ("", "found none on line 1"), ("a\n\nb\n", "line 2 is blank"), ("a\nb\na\n", "repeated: a"),
    ("\n".join(f"c{i}" for i in range(256)), "256 classes, expected at most 255"),
    ("only\n", "1 class \\(only\\), expected at least 2"),
])
def test_class_list_problems_name_the_file(tmp_path, text, problem):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(KitError, match=problem) as e:
        read_class_names(tmp_path / "classes.txt")
    assert str(tmp_path / "classes.txt") in str(e.value)


# ------------------------------------------------------------------------------------- bad trees


def _no_classes(root):
    (root / "classes.txt").unlink()


def _orphan_mask(root):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "ghost.png")


def _empty_images(root):
    for p in (root / "images").iterdir():
        p.unlink()
    for p in (root / "masks").iterdir():
        p.unlink()


def _same_stem(root):
    Image.open(root / "images" / "im00.png").convert("RGB").save(root / "images" / "im00.jpg")


def _value_too_large(root):
    m = np.array(Image.open(root / "masks" / "im00.png"))
    m[0, 0] = 7
    Image.fromarray(m).save(root / "masks" / "im00.png")


def _size_mismatch(root):
    m = np.array(Image.open(root / "masks" / "im00.png"))
    Image.fromarray(m[:-3]).save(root / "masks" / "im00.png")


def _val_without_mask(root):
    (root / "val" / "masks" / "v00.png").unlink()


def _listed_without_mask(root):
    (root / "labeled.txt").write_text("im00\nim10\n")


def _too_few_masks(root):
    for p in list((root / "masks").iterdir())[1:]:
        p.unlink()
    (root / "val").rename(root / "not-val")


# name: (how to break a tree with val/, what the one line on stderr must say)
BAD_TREES = {
    "no_classes_txt": (_no_classes, r"classes\.txt: class list not found"),
    "mask_without_image": (_orphan_mask, r"masks/ghost\.png: mask without an image"),
    "empty_images_folder": (_empty_images, r"images: no images \(expected image files PIL reads: \.jpg, \.png, \.webp"),
    "two_images_one_name": (_same_stem, r"images/im00\.(png|jpg): two images share the name 'im00'"),
    "value_not_a_class": (_value_too_large, r"masks/im00\.png: label values \[7\] outside \[0, 3\)"),
    "size_mismatch": (_size_mismatch, r"masks/im00\.png: label size \d+x\d+ differs from image"),
    "val_image_without_mask": (_val_without_mask, r"val/masks/v00\.png: validation image v00\.png has no mask"),
    "labeled_list_names_unmasked": (_listed_without_mask, r"labeled\.txt: 'im10' is listed as labeled but"),
    "too_few_masks": (_too_few_masks, r"1 image\(s\) with masks; without a val/ folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_bad_tree_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys, case):
    root = make_tree(tmp_path / "t", n=12, masked=8, val=2)
    breaks, pattern = BAD_TREES[case]
    breaks(root)
    code = cli.main(["train", "--dataset", "folder", "--data-root", str(root), "--method", "supervised",
                     "--labeled", "all", "--set", "iterations=2", "--set", "backbone=resnet18_w16",
                     "--set", "backbone_weights=none", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert __import__("re").search(pattern, err), err


# ------------------------------------------------------------------- every method, the defaults


@pytest.mark.parametrize("method", registry.method_names())
def test_every_method_trains_on_a_folder_from_the_command_line(tmp_path, capsys, method):
    root = make_tree(tmp_path / "t")
    out = tmp_path / "run"
    with pytest.warns(RandomInitWarning):
        code = cli.main(["train", "--dataset", "folder", "--data-root", str(root), "--method", method,
                         "--set", "iterations=3", "--set", "backbone=resnet18_w16", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert metrics["class_names"] == CLASSES and len(metrics["per_class_iou"]) == 3
    assert saved["dataset"] == "folder" and saved["backbone_weights"] == "none"   # recorded, as warned


CPU_PRESETS = [p for p in PRESETS if p not in PAPER_PRESETS]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache; put_imagenet() places a (fake) ResNet-18 ImageNet file in it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def put_imagenet():
        f = imagenet_file("resnet18")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"stand-in")
    return put_imagenet


@pytest.mark.parametrize("dataset", ["voc", "cityscapes", "folder"])
@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_cpu_preset_on_real_data_drops_the_digit_backbone_for_imagenet_or_random_init(tmp_path, torch_home,
                                                                                     preset, dataset):
    root = make_tree(tmp_path / "t")
    cfg = make_config(preset, dataset=dataset, data_root=str(root))       # never refused
    assert (cfg.backbone, cfg.backbone_weights) == ("resnet18", "none")
    with pytest.warns(RandomInitWarning, match=r"resnet18-f37072fd\.pth"):
        check_ready_to_train(cfg)
    torch_home()
    cfg = make_config(preset, dataset=dataset, data_root=str(root))
    assert (cfg.backbone, cfg.backbone_weights) == ("resnet18", "imagenet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_ready_to_train(cfg)
    given = make_config(preset, dataset=dataset, data_root=str(root), backbone="resnet34", backbone_weights="none")
    assert (given.backbone, given.backbone_weights) == ("resnet34", "none")   # what the user set stays
    assert make_config(preset).backbone_weights == "digits"                   # the digit scenes keep theirs


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_keep_their_recipe_on_a_folder(tmp_path, torch_home, preset):
    torch_home()
    cfg = make_config(preset, dataset="folder", data_root=str(make_tree(tmp_path / "t")))
    paper = make_config(preset)
    assert (cfg.backbone, cfg.backbone_weights, cfg.crop) == (paper.backbone, paper.backbone_weights, paper.crop)
    assert cfg.labeled == "all"


def test_the_first_command_on_real_data_is_not_refused_for_the_digit_backbone(tmp_path, capsys, torch_home):
    """`train --method cpcl --dataset voc --data-root TREE --labeled 1/2` under a CPU preset was refused
    for backbone_weights=digits, a default the user never set."""
    from cpcl_kit.config import validate

    cfg = make_config("smoke", dataset="voc", data_root=str(tmp_path), labeled="1/2", method="cpcl")
    assert validate(cfg).backbone_weights == "none"
    assert cli.default_preset("folder") == "smoke"


def test_imagenet_file_names_are_torchvisions():
    from torchvision import models

    for name, file in IMAGENET_FILES.items():
        weights = models.get_model_weights(name).IMAGENET1K_V1
        assert os.path.basename(weights.url) == file


# ------------------------------------------------------------------ split lists, counts, the run's classes


def test_labeled_txt_without_val_folder_holds_out_only_images_it_does_not_name(tmp_path):
    root = make_tree(tmp_path / "t", n=12, masked=10)
    names = [f"im{i:02d}" for i in range(8)]
    (root / "labeled.txt").write_text("\n".join(names) + "\n")
    lab, unl, val = folder_splits(root)
    assert stems(lab) == names and set(stems(val)) <= {"im08", "im09"} and len(val) == 2
    (root / "labeled.txt").write_text("\n".join(f"im{i:02d}" for i in range(10)) + "\n")
    with pytest.raises(KitError, match=r"labeled\.txt: names every image with a mask as labeled"):
        folder_splits(root)


def test_an_asked_part_is_not_overridden_by_labeled_txt_and_unlabeled_txt_alone_is_refused(tmp_path):
    root = make_tree(tmp_path / "t", n=10, masked=10, val=2)
    (root / "labeled.txt").write_text("im01\n")
    assert len(folder_splits(root, labeled="1/2")[0]) == 5                 # --labeled 1/2 is what counts
    assert stems(folder_splits(root, labeled="all")[0]) == ["im01"]        # "all" reads the tree's list
    (root / "labeled.txt").rename(root / "old.txt")
    (root / "unlabeled.txt").write_text("im01\n")
    with pytest.raises(KitError, match=r"unlabeled\.txt: found without labeled\.txt"):
        folder_splits(root)


def test_every_masked_image_asked_for_is_fine_when_others_have_no_mask(tmp_path):
    root = make_tree(tmp_path / "t", n=8, masked=4, val=1)
    lab, unl, _ = folder_splits(root, labeled=4)
    assert len(lab) == 4 and stems(unl) == ["im04", "im05", "im06", "im07"]
    with pytest.raises(KitError, match="leaves no unlabeled image"):
        folder_splits(make_tree(tmp_path / "u", n=4, masked=4, val=1), labeled=4)


def test_a_jpeg_mask_is_refused_and_mask_names_match_in_any_case(tmp_path):
    root = make_tree(tmp_path / "t", n=4, masked=2, val=1)
    (root / "masks" / "im00.png").rename(root / "masks" / "im00.PNG")
    assert [m is not None for _, m in folder_pairs(root)[0]] == [True, True, False, False]
    Image.open(root / "images" / "im02.png").convert("RGB").save(root / "masks" / "im02.jpg")
    with pytest.raises(KitError, match=r"masks/im02\.jpg: a mask must be a PNG"):
        folder_pairs(root)


def test_the_run_keeps_its_classes_and_predicts_without_the_tree(tmp_path, capsys):
    import shutil

    import cpcl_kit

    root = make_tree(tmp_path / "t")
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "folder", "--data-root", str(root), "--method", "supervised",
                     "--set", "iterations=2", "--set", "backbone=resnet18_w16", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["class_names"] == CLASSES
    image = np.array(Image.open(root / "images" / "im00.png"))
    (root / "classes.txt").write_text("background\nsquare\ndisc\nstar\n")   # the tree changes ...
    cfg = make_config("smoke", dataset="folder", data_root=str(root))
    assert cfg.num_classes == 4
    with pytest.raises(KitError, match=r": classes .* differ from the run's class_names"):
        build_data(make_config("smoke", dataset="folder", data_root=str(root), class_names=tuple(CLASSES)))
    shutil.rmtree(root)                                                      # ... and goes
    (pred,) = cpcl_kit.predict(out, [image], progress=False)
    assert pred.shape == image.shape[:2] and pred.max() < 3


def test_doctor_ohem_deviations_and_noise_follow_a_folder(tmp_path):
    import torch

    from cpcl_kit.deviations import deviations
    from cpcl_kit.engine.doctor import data_status
    from cpcl_kit.experiments import noise
    from cpcl_kit.method.steps import ohem_ce, sup_loss

    root = make_tree(tmp_path / "t", classes=[f"c{i}" for i in range(19)])
    cfg = make_config("smoke", dataset="folder", data_root=str(root), sup_loss="ohem")
    assert data_status(cfg)["status"] == "found" and "folder data set: 12 training images" in data_status(cfg)["what"]
    logits, target = torch.randn(2, 19, 8, 8), torch.randint(0, 19, (2, 8, 8))
    # 19 classes of one's own are not Cityscapes': OHEM weighs them equally
    assert torch.allclose(sup_loss(cfg, logits, target), ohem_ce(logits, target))
    dev = deviations(cfg)
    assert "digit backbone" in dev["backbone"] and "random initialisation" in dev["backbone_weights"]
    assert all("chosen on the digit scenes" in v for k, v in dev.items() if k not in ("backbone", "backbone_weights"))
    assert noise.for_config(cfg) is None


def test_data_check_on_a_folder_reports_what_a_run_would_refuse(tmp_path, capsys):
    from cpcl_kit.data import prepare

    root = make_tree(tmp_path / "t", n=6, masked=1)
    rep = prepare.check_data(root, progress=False)
    assert rep["problems"]["problem"].str.contains("1 image\\(s\\) with masks").any()
    assert cli.main(["data", "check", str(root), "--quiet"]) == 2
    good = make_tree(tmp_path / "g", n=12, masked=10)
    rep = prepare.check_data(good, progress=False)
    assert rep["problems"].empty and rep["counts"]["images"].tolist() == [8, 2, 2]   # 2 held out for validation
