import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpcl_kit.data.cityscapes import CITYSCAPES_CLASS_NAMES, cityscapes_splits
from cpcl_kit.data.images import SegmentationFiles
from cpcl_kit.data.splits import make_partition, parse_labeled, read_pair_list, read_split_list, write_split_list
from cpcl_kit.data.voc import VOC_CLASS_NAMES, voc_files, voc_splits
from cpcl_kit.errors import KitError

# The CPS split lists themselves are not part of the kit: point CPCL_KIT_SPLITS at a folder holding
# them (voc/, cityscapes/) to check that they parse. The other split tests write their own lists.
SPLITS = Path(os.environ["CPCL_KIT_SPLITS"]) if os.environ.get("CPCL_KIT_SPLITS") else None
H, W = 10, 12


def _img(path: Path, size=(W, H), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)


def _mask(path: Path, values=(0, 1, 255), size=(W, H), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.array(values, np.uint8), size[1] * size[0]).reshape(size[1], size[0])
    im = Image.fromarray(arr, mode="L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    im.save(path)


# ------------------------------------------------------------------------------ SegmentationFiles


def test_reads_image_and_palette_mask_as_indices(tmp_path):
    _img(tmp_path / "a.jpg")
    _mask(tmp_path / "a.png", values=(0, 3, 20, 255), mode="P")
    x, y = SegmentationFiles([(tmp_path / "a.jpg", tmp_path / "a.png")], num_classes=21)[0]
    assert x.shape == (3, H, W) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.unique().tolist()) == {0, 3, 20, 255}


def test_missing_mask_is_all_ignore(tmp_path):
    _img(tmp_path / "a.png", fmt="PNG")
    _, y = SegmentationFiles([(tmp_path / "a.png", None)], num_classes=21)[0]
    assert y.shape == (H, W) and bool((y == 255).all())


def test_missing_image_names_file(tmp_path):
    with pytest.raises(KitError, match="nope.jpg.*not found"):
        SegmentationFiles([(tmp_path / "nope.jpg", None)], 21)[0]


def test_corrupt_and_truncated_images(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    _img(tmp_path / "full.png", size=(64, 64), fmt="PNG")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("junk.jpg", "cut.png"):
        with pytest.raises(KitError, match=f"{name}: cannot read image"):
            SegmentationFiles([(tmp_path / name, None)], 21)[0]


def test_mask_values_out_of_range_are_named(tmp_path):
    _img(tmp_path / "a.jpg")
    _mask(tmp_path / "a.png", values=(0, 21, 40, 255))
    with pytest.raises(KitError, match=r"a.png: label values \[21, 40\] outside \[0, 21\)"):
        SegmentationFiles([(tmp_path / "a.jpg", tmp_path / "a.png")], 21)[0]


def test_mask_size_mismatch(tmp_path):
    _img(tmp_path / "a.jpg")
    _mask(tmp_path / "a.png", size=(W + 1, H))
    with pytest.raises(KitError, match="a.png: label size 13x10 differs from image"):
        SegmentationFiles([(tmp_path / "a.jpg", tmp_path / "a.png")], 21)[0]


def test_rgb_mask_rejected(tmp_path):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "a.png", fmt="PNG")
    with pytest.raises(KitError, match="single-channel"):
        SegmentationFiles([(tmp_path / "a.jpg", tmp_path / "a.png")], 21)[0]


# ------------------------------------------------------------------------------------ split lists


def test_read_split_list_formats(tmp_path):
    p = tmp_path / "l.txt"
    p.write_bytes(b"\xef\xbb\xbf2007_000032\r\n\r\n2007_000039\textra field\n  2007_000063 x\n"
                  b"JPEGImages/2007_000064.jpg SegmentationClass/2007_000064.png\nmy photo\n")
    # a byte-order mark and CRLF dropped; a tab ends the id; a line of one field is one id, spaces
    # included (the tree tells '2007_000063 x' from its first word: see test_voc_list_entry_readings);
    # UniMatch's image path names its stem
    assert read_split_list(p) == ["2007_000032", "2007_000039", "2007_000063 x", "2007_000064", "my photo"]


def test_split_list_errors(tmp_path):
    with pytest.raises(KitError, match="missing.txt: split list not found"):
        read_split_list(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(KitError, match="empty.txt: split list is empty"):
        read_split_list(tmp_path / "empty.txt")
    (tmp_path / "evil.txt").write_text("ok_id\n../../etc/passwd\n")
    with pytest.raises(KitError, match="evil.txt.*escape the data root"):
        read_split_list(tmp_path / "evil.txt")
    (tmp_path / "evil2.txt").write_text("/images/train/a.png\t/segmentation/../../../x.png\n")
    with pytest.raises(KitError, match="escape"):
        read_pair_list(tmp_path / "evil2.txt")


def test_write_read_roundtrip(tmp_path):
    ids = ["a", "b_1", "c"]
    assert read_split_list(write_split_list(tmp_path / "sub" / "x.txt", ids)) == ids
    pairs = [("images/train/a.png", "segmentation/train/a_gtFine.png")]
    text = write_split_list(tmp_path / "p.txt", pairs).read_text()
    assert text == "/images/train/a.png\t/segmentation/train/a_gtFine.png\n"
    assert read_pair_list(tmp_path / "p.txt") == pairs


def test_parse_labeled():
    assert parse_labeled("1/16") == pytest.approx(0.0625)
    assert parse_labeled("0.125") == pytest.approx(0.125)
    assert parse_labeled("92") == 92 and isinstance(parse_labeled("92"), int)
    for bad in ("abc", "0", "1/0", "3/2", "-1", "1.5"):
        with pytest.raises(KitError, match="labeled"):
            parse_labeled(bad)


def test_make_partition():
    ids = [f"id{i}" for i in range(32)]
    lab, unl = make_partition(ids, "1/8", seed=1)
    assert len(lab) == 4 and len(unl) == 28 and set(lab) | set(unl) == set(ids) and not set(lab) & set(unl)
    assert make_partition(ids, "1/8", seed=1) == (lab, unl)
    assert make_partition(ids, "1/8", seed=2)[0] != lab
    assert lab == sorted(lab, key=ids.index)  # input order kept
    assert len(make_partition(ids, 5, seed=0)[0]) == 5
    assert len(make_partition(list(range(1464)), "1/16", 0)[0]) == 92  # rounds half up like PseudoSeg


def test_partition_leaving_nothing_labeled_or_unlabeled():
    with pytest.raises(KitError, match="leaves no labeled image"):
        make_partition(["a", "b", "c"], "1/16", 0)
    with pytest.raises(KitError, match="leaves no unlabeled image"):
        make_partition(["a", "b", "c"], 3, 0)


# -------------------------------------------------------------------------------------------- VOC

TRAIN = [f"2007_{i:06d}" for i in range(8)]
VAL = ["2008_000001", "2008_000002"]


def _voc_cps(root: Path, with_subset=True) -> Path:
    for split, ids in (("train_aug", TRAIN), ("val", VAL)):
        for i in ids:
            _img(root / split / "image" / f"{i}.jpg")
            _mask(root / split / "label" / f"{i}.png")
    write_split_list(root / "train_aug.txt", TRAIN)
    write_split_list(root / "val.txt", VAL)
    if with_subset:
        write_split_list(root / "subset_train_aug" / "train_aug_labeled_1-4.txt", TRAIN[:2])
        write_split_list(root / "subset_train_aug" / "train_aug_unlabeled_1-4.txt", TRAIN[2:])
    return root


def _voc_standard(base: Path, aug=False) -> Path:
    for i in TRAIN + VAL:
        _img(base / "JPEGImages" / f"{i}.jpg")
        _mask(base / ("SegmentationClassAug" if aug else "SegmentationClass") / f"{i}.png")
    sets = base / "ImageSets" / "Segmentation"
    write_split_list(sets / "train.txt", TRAIN)
    write_split_list(sets / "val.txt", VAL)
    if aug:
        write_split_list(sets / "trainaug.txt", TRAIN)
    return base


def test_voc_cps_layout_uses_published_subset(tmp_path):
    lab, unl, val = voc_splits(_voc_cps(tmp_path), labeled="1/4")
    assert [p[0].stem for p in lab] == TRAIN[:2] and [p[0].stem for p in unl] == TRAIN[2:]
    assert lab[0][0] == tmp_path / "train_aug" / "image" / f"{TRAIN[0]}.jpg"
    assert lab[0][1] == tmp_path / "train_aug" / "label" / f"{TRAIN[0]}.png"
    assert val[1] == (tmp_path / "val" / "image" / f"{VAL[1]}.jpg", tmp_path / "val" / "label" / f"{VAL[1]}.png")
    x, y = SegmentationFiles(lab, len(VOC_CLASS_NAMES))[0]
    assert x.shape == (3, H, W)


def test_voc_own_partition_written_to_out_dir(tmp_path):
    root = _voc_cps(tmp_path / "voc")
    lab, unl, _ = voc_splits(root, labeled="1/2", seed=5, out_dir=tmp_path / "splits")
    assert len(lab) == 4 and len(unl) == 4
    written = read_split_list(tmp_path / "splits" / "train_aug_labeled_1-2.txt")
    assert written == [p[0].stem for p in lab]
    assert read_split_list(tmp_path / "splits" / "train_aug_unlabeled_1-2.txt") == [p[0].stem for p in unl]
    assert voc_splits(root, labeled="1/2", seed=5)[0] == lab  # same seed, same split; nothing written
    lab3, _, _ = voc_splits(root, labeled=3)
    assert len(lab3) == 3


def test_voc_explicit_lists_and_full_supervision(tmp_path):
    root = _voc_cps(tmp_path / "voc")
    lab_list = write_split_list(tmp_path / "l.txt", TRAIN[5:7])
    lab, unl, _ = voc_splits(root, labeled_list=lab_list)
    assert [p[0].stem for p in lab] == TRAIN[5:7]
    assert [p[0].stem for p in unl] == TRAIN[:5] + TRAIN[7:]
    unl_list = write_split_list(tmp_path / "u.txt", TRAIN)  # few-supervision style: all as unlabeled
    assert len(voc_splits(root, labeled_list=lab_list, unlabeled_list=unl_list)[1]) == 8
    lab, unl, _ = voc_splits(root, labeled=None)
    assert len(lab) == 8 and unl == []


@pytest.mark.parametrize("where", ["devkit", "itself"])
def test_voc_standard_layout(tmp_path, where):
    base = tmp_path / "VOCdevkit" / "VOC2012" if where == "devkit" else tmp_path / "VOC2012"
    _voc_standard(base)
    root = tmp_path if where == "devkit" else base
    lab, unl, val = voc_splits(root, labeled=2, seed=0)
    assert len(lab) == 2 and len(unl) == 6 and len(val) == 2
    assert lab[0][0].parent == base / "JPEGImages" and lab[0][1].parent == base / "SegmentationClass"


def test_voc_standard_prefers_aug_labels(tmp_path):
    base = _voc_standard(tmp_path / "VOC2012", aug=True)
    lab, _, _ = voc_splits(base, labeled="1/4")
    assert lab[0][1].parent.name == "SegmentationClassAug"


def test_voc_root_missing_or_unknown(tmp_path):
    with pytest.raises(KitError, match="nowhere: VOC data root does not exist.*CPS layout.*standard"):
        voc_splits(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    with pytest.raises(KitError, match="junk: VOC data root is in neither known layout"):
        voc_splits(tmp_path / "junk")


def test_voc_id_without_image(tmp_path):
    root = _voc_cps(tmp_path)
    (root / "train_aug" / "image" / f"{TRAIN[3]}.jpg").unlink()
    with pytest.raises(KitError, match=f"1 of 8 images listed in the split not found, e.g. .*{TRAIN[3]}.jpg"):
        voc_splits(root, labeled=None)
    with pytest.raises(KitError, match="escape"):
        voc_files(root, ["../val/image/x"], "train")


def test_voc_list_entry_readings(tmp_path):
    root = _voc_cps(tmp_path / "voc", with_subset=False)
    lst = tmp_path / "l.txt"
    lst.write_text(f"{TRAIN[0]} 1\nJPEGImages/{TRAIN[1]}.jpg SegmentationClass/{TRAIN[1]}.png\n")
    lab, unl, _ = voc_splits(root, labeled_list=lst)
    assert [p[0].stem for p in lab] == TRAIN[:2] and len(unl) == len(TRAIN) - 2


# ------------------------------------------------------------------------------------- Cityscapes

CITY_TRAIN = ["jena_000001_000019", "jena_000002_000019", "ulm_000003_000019", "bad_honnef_000004_000019"]


def _city_standard(root: Path) -> Path:
    for split, names in (("train", CITY_TRAIN), ("val", ["frankfurt_000000_000294"])):
        for n in names:
            city = n.rsplit("_", 2)[0]
            _img(root / "leftImg8bit" / split / city / f"{n}_leftImg8bit.png", fmt="PNG")
            _mask(root / "gtFine" / split / city / f"{n}_gtFine_labelTrainIds.png", values=(0, 18, 255))
    return root


def test_cityscapes_standard_scan_and_partition(tmp_path):
    root = _city_standard(tmp_path / "city")
    lab, unl, val = cityscapes_splits(root, labeled="1/2", seed=0, out_dir=tmp_path / "s")
    assert len(lab) == 2 and len(unl) == 2 and len(val) == 1
    assert all(p[1].name.endswith("_gtFine_labelTrainIds.png") and p[1].is_file() for p in lab + unl + val)
    assert len(read_pair_list(tmp_path / "s" / "train_aug_labeled_1-2.txt")) == 2
    x, y = SegmentationFiles(val, len(CITYSCAPES_CLASS_NAMES))[0]
    assert set(y.unique().tolist()) == {0, 18, 255}


def test_cityscapes_cps_lists_on_standard_tree(tmp_path):
    root = _city_standard(tmp_path / "city")
    lst = tmp_path / "lab.txt"
    lst.write_text(
        "/images/train/jena_000002_000019.png\t/segmentation/train/jena_000002_000019_gtFine.png\n"
        "/images/train/bad_honnef_000004_000019.png\t/segmentation/train/bad_honnef_000004_000019_gtFine.png\n"
    )
    lab, unl, _ = cityscapes_splits(root, labeled_list=lst)
    assert lab[0] == (
        root / "leftImg8bit/train/jena/jena_000002_000019_leftImg8bit.png",
        root / "gtFine/train/jena/jena_000002_000019_gtFine_labelTrainIds.png",
    )
    assert lab[1][0].parent.name == "bad_honnef" and len(unl) == 2


def test_cityscapes_cps_layout(tmp_path):
    root = tmp_path / "city"
    entries = []
    for split, n in [("train", c) for c in CITY_TRAIN] + [("val", "frankfurt_000000_000294")]:
        _img(root / "images" / split / f"{n}.png", fmt="PNG")
        _mask(root / "segmentation" / split / f"{n}_gtFine.png")
        entries.append((split, (f"images/{split}/{n}.png", f"segmentation/{split}/{n}_gtFine.png")))
    write_split_list(root / "config_new" / "train.txt", [e for s, e in entries if s == "train"])
    write_split_list(root / "config_new" / "val.txt", [e for s, e in entries if s == "val"])
    write_split_list(root / "config_new" / "subset_train" / "train_aug_labeled_1-4.txt", [entries[1][1]])
    lab, unl, val = cityscapes_splits(root, labeled="1/4")
    assert lab == [(root / entries[1][1][0], root / entries[1][1][1])]
    assert len(unl) == 3 and len(val) == 1


def test_cityscapes_root_errors(tmp_path):
    with pytest.raises(KitError, match="Cityscapes data root does not exist.*leftImg8bit.*images/"):
        cityscapes_splits(tmp_path / "none")


# ------------------------------------------------------------------------- real published lists


@pytest.mark.skipif(SPLITS is None or not SPLITS.is_dir(),
                    reason="set CPCL_KIT_SPLITS to a folder of the published CPS split lists (voc/, cityscapes/)")
def test_published_split_lists_parse():
    voc = SPLITS / "voc"
    assert len(read_split_list(voc / "train_aug_labeled_1-16.txt")) == 662
    assert len(read_split_list(voc / "train_aug_labeled_1-8.txt")) == 1323
    assert len(read_split_list(voc / "pseudoseg_labeled_1-16.txt")) == 92  # CRLF, no final newline
    lab = set(read_split_list(voc / "train_aug_labeled_1-16.txt"))
    unl = set(read_split_list(voc / "train_aug_unlabeled_1-16.txt"))
    assert not lab & unl and len(lab | unl) == 10582
    city = SPLITS / "cityscapes"
    pairs = read_pair_list(city / "train_aug_labeled_1-16.txt")
    assert len(pairs) == 186 and all(i.startswith("images/train/") and l.endswith("_gtFine.png") for i, l in pairs)
    assert len(read_pair_list(city / "train.txt")) == 2975 and len(read_pair_list(city / "val.txt")) == 500


def test_an_image_past_pils_pixel_limit_is_refused_not_read(tmp_path, monkeypatch):
    """Between one and two times PIL's limit PIL only warns: the readers refuse such an image in one
    line, so a size check cannot pass it on to fill a run's memory."""
    from PIL import Image

    from cpcl_kit.data.images import image_size, read_image, read_label_image

    Image.new("RGB", (30, 20)).save(tmp_path / "big.png")
    Image.new("L", (30, 20)).save(tmp_path / "big_mask.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 600 pixels: past the limit, under twice it
    for read, name in ((read_image, "big.png"), (image_size, "big.png"), (read_label_image, "big_mask.png")):
        with pytest.raises(KitError, match=f"{name}: cannot read .*exceeds limit"):
            read(tmp_path / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert read_image(tmp_path / "big.png").shape == (20, 30, 3)
