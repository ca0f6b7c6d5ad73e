"""``python -m cpcl_kit data ...`` (cpcl_kit/data/prepare.py) on small trees built here: VOC 2012 + SBD
merged into SegmentationClassAug, Cityscapes labelIds -> trainIds, and the data check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from cpcl_kit import cli
from cpcl_kit.data import prepare
from cpcl_kit.data.cityscapes import CITYSCAPES_CLASS_NAMES, cityscapes_splits
from cpcl_kit.data.voc import voc_splits
from cpcl_kit.data.splits import read_split_list
from cpcl_kit.errors import KitError

# --------------------------------------------------------------------------------- small VOC + SBD

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000004", "2008_000005"]
# 2007_000002: in VOC train too (VOC's mask wins); 2007_000004: VOC val (left out of train_aug);
# 2008_000010: in both SBD lists (listed once)
SBD_TRAIN = ["2008_000010", "2007_000002", "2008_000011", "2007_000004"]
SBD_VAL = ["2008_000012", "2008_000010"]
TRAIN_AUG = ["2007_000001", "2007_000002", "2007_000003", "2008_000010", "2008_000011", "2008_000012"]


def _size(i: str) -> tuple[int, int]:
    """(height, width), different per id."""
    return 8 + int(i[-1]) % 3, 11 + int(i[-2:]) % 4


def _labels(i: str, source: str) -> np.ndarray:
    rng = np.random.default_rng(int(i[-6:]) + (0 if source == "voc" else 1000))
    a = rng.integers(0, 21, _size(i), dtype=np.uint8)
    if source == "voc":
        a[0, :] = 255  # VOC's object borders
    return a


def _jpg(path: Path, hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)


def _palette_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(a).convert("P")  # 'L' -> 'P' keeps the values as palette indices
    img.putpalette([v for k in range(256) for v in (k * 7 % 256, k * 13 % 256, k * 29 % 256)])
    img.save(path)


def _voc_sbd(tmp: Path) -> tuple[Path, Path]:
    voc, sbd = tmp / "VOCdevkit" / "VOC2012", tmp / "benchmark_RELEASE"
    for i in sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL)):
        _jpg(voc / "JPEGImages" / f"{i}.jpg", _size(i))
    for i in VOC_TRAIN + VOC_VAL:
        _palette_png(voc / "SegmentationClass" / f"{i}.png", _labels(i, "voc"))
    for i in set(SBD_TRAIN + SBD_VAL):
        (sbd / "dataset" / "cls").mkdir(parents=True, exist_ok=True)
        savemat(sbd / "dataset" / "cls" / f"{i}.mat",
                {"GTcls": {"Segmentation": _labels(i, "sbd"), "Boundaries": np.zeros(1), "CategoriesPresent": 1}})
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (sbd / "dataset" / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "dataset" / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return voc, sbd


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.array(img)


def test_voc_aug_merges_voc_and_sbd_masks_and_writes_the_lists(tmp_path):
    voc, sbd = _voc_sbd(tmp_path)
    out = tmp_path / "aug"
    r = prepare.voc_aug(voc, sbd, out, progress=False)
    assert (r.train_aug, r.val, r.written, r.kept) == (6, 2, 8, 0)
    assert (r.from_voc, r.from_sbd) == (5, 3) and not r.standard
    sets = out / "ImageSets" / "Segmentation"
    assert read_split_list(sets / "trainaug.txt") == TRAIN_AUG
    assert read_split_list(sets / "val.txt") == VOC_VAL
    for i in TRAIN_AUG + VOC_VAL:
        want = _labels(i, "voc" if i in VOC_TRAIN + VOC_VAL else "sbd")
        np.testing.assert_array_equal(_png(out / "SegmentationClassAug" / f"{i}.png"), want, err_msg=i)
    assert 255 in _png(out / "SegmentationClassAug" / "2007_000002.png")  # VOC's, not SBD's (no 255)
    assert (out / "JPEGImages").is_symlink() and (out / "JPEGImages").resolve() == (voc / "JPEGImages").resolve()

    # the prepared root is a VOC data root as it is
    lab, unl, val = voc_splits(out, labeled=None)
    assert [p[0].stem for p in lab] == TRAIN_AUG and unl == [] and [p[0].stem for p in val] == VOC_VAL
    assert lab[0][1] == out / "SegmentationClassAug" / f"{TRAIN_AUG[0]}.png"
    from cpcl_kit.config import make_config
    from cpcl_kit.data import build_data

    cfg = make_config("smoke", dataset="voc", data_root=str(out), labeled="2", backbone_weights="none")
    data = build_data(cfg)
    assert (len(data.labeled), len(data.unlabeled), len(data.val)) == (2, 4, 2)
    x, y = data.val[1]
    assert tuple(y.shape) == _size(VOC_VAL[1]) and set(y.unique().tolist()) <= set(range(21)) | {255}


def test_voc_aug_is_idempotent_and_resumes(tmp_path):
    voc, sbd = _voc_sbd(tmp_path)
    out = tmp_path / "aug"
    prepare.voc_aug(voc, sbd, out, progress=False)
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink() and "JPEGImages" not in p.parts)
    first = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    r = prepare.voc_aug(voc, sbd, out, progress=False)
    assert (r.written, r.kept) == (0, 8)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == first  # nothing touched

    masks = out / "SegmentationClassAug"
    cut, gone = masks / f"{TRAIN_AUG[3]}.png", masks / f"{VOC_VAL[0]}.png"
    cut.write_bytes(first[cut][0][: len(first[cut][0]) // 2])  # a file cut short
    gone.unlink()
    (out / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("2007_000001\n")
    r = prepare.voc_aug(voc, sbd, out, progress=False)
    assert (r.written, r.kept) == (2, 6)
    assert {p: p.read_bytes() for p in files} == {p: b for p, (b, _) in first.items()}
    assert not [p for p in out.rglob(".*") if p.name != "JPEGImages"]  # no temp files left


def test_voc_aug_into_the_voc_folder_itself(tmp_path):
    voc, sbd = _voc_sbd(tmp_path)
    val_before = (voc / "ImageSets" / "Segmentation" / "val.txt").read_bytes()
    r = prepare.voc_aug(voc, sbd, voc, progress=False)
    assert (r.train_aug, r.val) == (6, 2) and not (voc / "JPEGImages").is_symlink()
    assert (voc / "ImageSets" / "Segmentation" / "val.txt").read_bytes() == val_before
    lab, _, _ = voc_splits(tmp_path, labeled=None)  # found as VOCdevkit/VOC2012 under tmp_path
    assert lab[0][1].parent.name == "SegmentationClassAug" and len(lab) == 6


def test_voc_aug_bad_inputs_name_the_path(tmp_path):
    voc, sbd = _voc_sbd(tmp_path)
    out = tmp_path / "aug"
    (sbd / "dataset" / "cls" / "2008_000011.mat").unlink()
    with pytest.raises(KitError, match=r"1 of 8 train_aug/val masks not found, e\.g\. .*cls/2008_000011\.mat "
                                       r"\(expected .*SegmentationClass/<id>\.png or .*cls/<id>\.mat\)"):
        prepare.voc_aug(voc, sbd, out, progress=False)
    (sbd / "dataset" / "cls" / "2008_000011.mat").write_bytes(b"not a mat file")
    with pytest.raises(KitError, match=r"2008_000011\.mat: cannot read SBD mask \(expected .*GTcls\.Segmentation"):
        prepare.voc_aug(voc, sbd, out, progress=False)
    savemat(sbd / "dataset" / "cls" / "2008_000011.mat", {"GTcls": {"Segmentation": _labels("2008_000011", "sbd")[1:]}})
    with pytest.raises(KitError, match=r"2008_000011\.mat: mask size 1\dx\d differs from image .*2008_000011\.jpg"):
        prepare.voc_aug(voc, sbd, out, progress=False)
    (voc / "JPEGImages" / "2007_000003.jpg").unlink()
    with pytest.raises(KitError, match=r"1 of 8 train_aug/val images not found, e\.g\. .*2007_000003\.jpg"):
        prepare.voc_aug(voc, sbd, out, progress=False)
    (sbd / "dataset" / "val.txt").unlink()
    with pytest.raises(KitError, match=r"dataset/val\.txt: split list not found"):
        prepare.voc_aug(voc, sbd, out, progress=False)
    with pytest.raises(KitError, match=r"nowhere: SBD folder not found \(expected benchmark_RELEASE with dataset/cls"):
        prepare.voc_aug(voc, tmp_path / "nowhere", out, progress=False)
    with pytest.raises(KitError, match=r"holds a VOC tree at .*VOCdevkit/VOC2012"):
        prepare.voc_aug(voc, sbd, tmp_path, progress=False)


def test_cli_voc_aug(tmp_path, capsys):
    voc, sbd = _voc_sbd(tmp_path)
    out = tmp_path / "aug"
    assert cli.main(["data", "voc-aug", "--voc", str(voc), "--sbd", str(sbd), "--out", str(out), "--quiet"]) == 0
    res = capsys.readouterr()
    assert "6 train_aug ids" in res.out and "2 val ids" in res.out and "8 masks written, 0 kept" in res.out
    assert f"--data-root {out}" in res.out
    assert res.err.strip().startswith("warning: 6 / 2 train_aug / val images, the full VOC 2012 + SBD sets give "
                                      "10,582 / 1,449")

    missing = tmp_path / "no-such-voc"
    assert cli.main(["data", "voc-aug", "--voc", str(missing), "--sbd", str(sbd), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {missing}: VOC folder not found (expected VOCdevkit/VOC2012")


# ------------------------------------------------------------------------------------ Cityscapes

# labelId -> trainId, written out from the Cityscapes definition (not from the kit's table)
BY_HAND = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
           26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_the_table_is_the_official_one_and_names_the_kits_classes():
    assert len(prepare.CITYSCAPES_LABELS) == 35
    assert {i: t for i, _, t in prepare.CITYSCAPES_LABELS if t != 255} == BY_HAND
    trained = sorted((t, name) for _, name, t in prepare.CITYSCAPES_LABELS if t != 255)
    assert [name for _, name in trained] == CITYSCAPES_CLASS_NAMES
    ids = np.array([*range(34), -1, 255, 40])
    want = [BY_HAND.get(i, 255) for i in ids]
    assert prepare.label_ids_to_train_ids(ids).tolist() == want
    assert prepare.label_ids_to_train_ids(ids.astype(np.int16)).dtype == np.uint8
    u8 = np.array([*range(34), 255], np.uint8).reshape(5, 7)
    assert prepare.label_ids_to_train_ids(u8).tolist() == [[BY_HAND.get(int(v), 255) for v in row] for row in u8]


CITIES = {"train": ["aachen", "jena"], "val": ["lindau"], "test": ["berlin"]}


def _cityscapes(root: Path, with_train_ids=False) -> dict[Path, np.ndarray]:
    """A tiny standard tree; {labelIds file: its labels}. Every id 0..33 and 255 occurs."""
    made = {}
    for k, (split, cities) in enumerate((s, c) for s, cs in CITIES.items() for c in cs):
        stem = f"{cities}_{k:06d}_000019"
        a = np.resize(np.array([*range(34), 255], np.uint8), 6 * 8)
        a = np.roll(a, k).reshape(6, 8)
        _jpg(root / "leftImg8bit" / split / cities / f"{stem}_leftImg8bit.png", a.shape)
        lbl = root / "gtFine" / split / cities / f"{stem}_gtFine_labelIds.png"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(lbl)
        made[lbl] = a
        if with_train_ids:
            Image.fromarray(prepare.label_ids_to_train_ids(a)).save(str(lbl).replace("_labelIds", "_labelTrainIds"))
    return made


def test_cityscapes_train_ids_beside_every_label_file(tmp_path):
    made = _cityscapes(tmp_path)
    r = prepare.cityscapes_train_ids(tmp_path, progress=False)
    assert (r.written, r.kept, r.per_split) == (4, 0, {"train": 2, "val": 1, "test": 1})
    outs = {}
    for lbl, a in made.items():
        out = lbl.with_name(lbl.name.replace("_labelIds", "_labelTrainIds"))
        want = np.vectorize(lambda v: BY_HAND.get(int(v), 255))(a)
        np.testing.assert_array_equal(_png(out), want)
        outs[out] = (out.read_bytes(), out.stat().st_mtime_ns)
    lab, _, val = cityscapes_splits(tmp_path, labeled=None)  # the reader takes them
    assert len(lab) == 2 and len(val) == 1

    r = prepare.cityscapes_train_ids(tmp_path, progress=False)
    assert (r.written, r.kept) == (0, 4)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outs} == outs
    cut = next(iter(outs))
    cut.write_bytes(outs[cut][0][:40])
    assert prepare.cityscapes_train_ids(tmp_path, progress=False).written == 1
    assert {p: p.read_bytes() for p in outs} == {p: b for p, (b, _) in outs.items()}


def test_cityscapes_train_ids_bad_root(tmp_path, capsys):
    assert cli.main(["data", "cityscapes-trainids", "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: Cityscapes data root not found (expected gtFine/" in err
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(KitError, match=r"gtFine: no \*_gtFine_labelIds\.png files"):
        prepare.cityscapes_train_ids(tmp_path, progress=False)
    _cityscapes(tmp_path)
    assert cli.main(["data", "cityscapes-trainids", "--root", str(tmp_path), "--quiet"]) == 0
    assert "2 train, 1 val, 1 test: 4 written, 0 kept" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- check


def test_check_a_prepared_voc_tree(tmp_path, capsys):
    voc, sbd = _voc_sbd(tmp_path)
    out = tmp_path / "aug"
    prepare.voc_aug(voc, sbd, out, progress=False)
    rep = prepare.check_data(out, progress=False)
    assert rep["dataset"] == "voc" and rep["problems"].empty
    assert rep["counts"].set_index("set")["images"].to_dict() == {"labeled": 6, "unlabeled": 0, "val": 2}
    want_train = sum(np.bincount(_png(out / "SegmentationClassAug" / f"{i}.png").ravel(), minlength=256)
                     for i in TRAIN_AUG)
    classes = rep["classes"].set_index("id")
    assert classes["train_pixels"].tolist() == [*want_train[:21], want_train[255]]
    assert classes.loc[255, "class"] == "(ignore)" and classes.loc[1, "class"] == "aeroplane"
    sizes = rep["sizes"].set_index("split")
    assert sizes.loc["train", "images"] == 6 and sizes.loc["train", "min_h"] == 8 and sizes.loc["train", "max_w"] == 14
    assert cli.main(["data", "check", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "voc data set in" in text and "no problems found" in text and "aeroplane" in text


def test_check_finds_planted_voc_problems(tmp_path, capsys):
    voc, sbd = _voc_sbd(tmp_path)
    out = tmp_path / "aug"
    prepare.voc_aug(voc, sbd, out, progress=False)
    (out / "SegmentationClassAug" / "2007_000003.png").unlink()
    (out / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_VAL + ["2009_000099"]) + "\n")
    Image.fromarray(np.full((3, 3), 30, np.uint8)).save(out / "SegmentationClassAug" / "2008_000011.png")
    rep = prepare.check_data(out, "voc", progress=False)
    problems = rep["problems"]
    assert len(problems) == 4, problems.to_string()
    rows = sorted((r.split, Path(r.file).name, r.problem) for r in problems.itertuples())
    (s1, f1, p1), (s2, f2, p2), (s3, f3, p3), (s4, f4, p4) = rows
    assert (s1, f1, p1) == ("train", "2007_000003", f"not found: {out / 'SegmentationClassAug' / '2007_000003.png'}")
    assert (s2, f2, s3, f3) == ("train", "2008_000011.png", "train", "2008_000011.png")
    assert p2.startswith("label size 3x3 differs from image") and p2.endswith("2008_000011.jpg size 14x9")
    assert p3 == "label values [30] outside [0, 21) and not the ignore value 255"
    assert (s4, f4, p4) == ("val", "2009_000099", f"not found: {out / 'JPEGImages' / '2009_000099.jpg'}")
    assert cli.main(["data", "check", str(out), "--quiet"]) == 2
    res = capsys.readouterr()
    assert "4 problem(s):" in res.out and "2009_000099" in res.out
    assert res.err.count("\n") == 1 and "4 problem(s) in the voc data set (listed above)" in res.err


def _folder(root: Path, classes=("bg", "cat", "dog")) -> None:
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for k, name in enumerate(["a", "b", "c", "d"]):
        _jpg(root / "images" / f"{name}.jpg", (6, 7))
        if name != "d":  # d: unlabeled
            _palette_png(root / "masks" / f"{name}.png", np.resize(np.array([0, 1, 2, 255], np.uint8), (6, 7)))
    _jpg(root / "val" / "images" / "v.png", (6, 7))
    _palette_png(root / "val" / "masks" / "v.png", np.zeros((6, 7), np.uint8))


def test_check_folder_data_set_problems_each_named(tmp_path, capsys):
    _folder(tmp_path / "good")
    rep = prepare.check_data(tmp_path / "good", progress=False)
    assert rep["dataset"] == "folder" and rep["problems"].empty
    assert rep["counts"]["images"].tolist() == [3, 1, 1]
    assert rep["classes"]["class"].tolist() == ["bg", "cat", "dog", "(ignore)"]
    assert rep["classes"]["val_pixels"].tolist() == [42, 0, 0, 0]
    assert cli.main(["data", "check", str(tmp_path / "good"), "--quiet"]) == 0

    root = tmp_path / "bad"
    _folder(root)
    (root / "images" / "b.jpg").write_bytes(b"garbage")                       # unreadable image
    _palette_png(root / "masks" / "c.png", np.full((6, 7), 3, np.uint8))      # value 3 with 3 classes
    _palette_png(root / "masks" / "a.png", np.zeros((5, 7), np.uint8))        # wrong size
    _palette_png(root / "masks" / "zz.png", np.zeros((6, 7), np.uint8))       # mask without image
    (root / "val" / "masks" / "v.png").unlink()                               # val image without mask
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(root / "masks" / "d.png")  # RGB mask
    rep = prepare.check_data(root, "folder", progress=False)
    rows = {Path(f).name: p for f, p in zip(rep["problems"]["file"], rep["problems"]["problem"])}
    assert len(rep["problems"]) == 6, rep["problems"].to_string()
    assert rows["b.jpg"].startswith("cannot read image")
    assert rows["c.png"] == "label values [3] outside [0, 3) and not the ignore value 255"
    assert rows["a.png"].startswith("label size 7x5 differs from image")
    assert rows["zz.png"].startswith("mask without an image")
    assert rows["v.png"] == "validation image v.png has no mask"
    assert "single-channel" in rows["d.png"] and "mode RGB" in rows["d.png"]
    assert cli.main(["data", "check", str(root), "--dataset", "folder", "--quiet"]) == 2
    res = capsys.readouterr()
    for name in rows:
        assert name in res.out
    assert res.err.count("\n") == 1

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "classes.txt").write_text("bg\nfg\n")
    rep = prepare.check_data(empty, progress=False)
    assert rep["problems"]["problem"].tolist() == ["no images (expected image files PIL reads: .jpg, .png, .webp, "
                                                   ".bmp, .tif, ...)"]
    assert rep["problems"]["file"].tolist() == [str(empty / "images")]


def test_check_cityscapes_before_and_after_train_ids(tmp_path, capsys):
    _cityscapes(tmp_path)
    rep = prepare.check_data(tmp_path, progress=False)
    assert rep["dataset"] == "cityscapes"
    assert len(rep["problems"]) == 3
    for r in rep["problems"].itertuples():
        assert r.file.endswith("_leftImg8bit.png") and r.problem.startswith("not found: ")
        assert r.problem.endswith(r.file.replace("leftImg8bit/", "gtFine/", 1).replace("leftImg8bit.png", "gtFine_labelTrainIds.png"))
    assert cli.main(["data", "check", str(tmp_path), "--quiet"]) == 2
    assert "data cityscapes-trainids --root" in capsys.readouterr().out
    prepare.cityscapes_train_ids(tmp_path, progress=False)
    rep = prepare.check_data(tmp_path, progress=False)
    assert rep["problems"].empty and rep["counts"]["images"].tolist() == [2, 0, 1]
    assert rep["classes"].iloc[:19]["train_pixels"].sum() > 0


def test_check_guess_and_bad_root(tmp_path, capsys):
    with pytest.raises(KitError, match="nowhere: data root not found"):
        prepare.check_data(tmp_path / "nowhere")
    (tmp_path / "odd").mkdir()
    assert cli.main(["data", "check", str(tmp_path / "odd")]) == 2
    assert "cannot tell the data set" in capsys.readouterr().err
