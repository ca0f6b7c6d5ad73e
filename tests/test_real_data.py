"""Real data as users bring it: phone photos with EXIF orientation, every image format PIL reads,
16-bit scans, names with spaces, byte-order marks, and trees and split lists made by other codebases
(UniMatch, U2PL, mmsegmentation).

Two tables, one row per case. RESULTS: (build the input in tmp_path and read it as the kit does,
the expected result). COMMANDS: (build the input, the command line, the exit code, what stdout
shows, the one line on stderr, what the command may write). Every row runs with HOME, the kit's
cache and the working folder inside tmp_path, and checks afterwards that no file of its input
changed except those the row names, and that nothing appeared in the repository's root.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from cpcl_kit import cli
from cpcl_kit.config import make_config
from cpcl_kit.data import prepare
from cpcl_kit.data.cityscapes import cityscapes_splits
from cpcl_kit.data.folder import folder_class_names, folder_pairs, folder_splits
from cpcl_kit.data.images import read_image
from cpcl_kit.data.voc import voc_splits

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "square", "disc"]
ORIENTATION = 0x0112  # the EXIF tag


# ------------------------------------------------------------------------------------ small inputs


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 [h,w,3] picture whose every quarter turn and mirror differs (a gradient plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + 2 * y) % 256], -1)
    return np.clip(base + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def save_image(path: Path, a: np.ndarray, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(a)
    if orientation is None:
        img.save(path)
    else:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        img.save(path, exif=exif)
    return path


def save_mask(path: Path, h: int, w: int, value: int = 1) -> Path:
    """An 'L' mask [h,w] of class 0 with a block of ``value`` in its top-left quarter."""
    m = np.zeros((h, w), np.uint8)
    m[: h // 2, : w // 2] = value
    return save_image(path, m)


def folder_tree(root: Path, images: dict[str, tuple[int, int]], masked: tuple[str, ...] | None = None,
                val: int = 1, classes: str | None = None) -> Path:
    """A folder data set: images/<file name> of (h, w), masks/<stem>.png for ``masked`` (default:
    every image), ``val`` more masked images under val/, classes.txt."""
    for i, (name, (h, w)) in enumerate(images.items()):
        p = save_image(root / "images" / name, picture(h, w, i))
        if masked is None or p.stem in masked:
            save_mask(root / "masks" / f"{p.stem}.png", h, w, 1 + i % 2)
    for i in range(val):
        save_image(root / "val" / "images" / f"v{i}.png", picture(30, 40, 100 + i))
        save_mask(root / "val" / "masks" / f"v{i}.png", 30, 40, 1 + i % 2)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(classes if classes is not None else "\n".join(CLASSES) + "\n",
                                      encoding="utf-8")
    return root


def plain_tree(root: Path, n: int = 3, **kw) -> Path:
    return folder_tree(root, {f"im{i}.png": (30, 40) for i in range(n)}, **kw)


VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003", "2008_000010"]
VOC_VAL = ["2007_000004", "2007_000005"]


def voc_mask(vid: str, source: str) -> np.ndarray:
    """VOC's own mask of an id (with its 255 border) or SBD's (no border), of the image's size."""
    a = np.zeros((24, 32), np.uint8)
    a[4:16, 6:20] = 1 + int(vid[-1]) % 20
    if source == "voc":
        a[3, 5:21] = 255
    return a


def mmseg_tree(tmp: Path) -> Path:
    """VOC 2012 as mmsegmentation's voc_aug leaves it: SegmentationClass (VOC's own masks) for VOC's
    ids, SegmentationClassAug with SBD's masks for every SBD id, VOC's val ids among them, and
    ImageSets/Segmentation/aug.txt."""
    base = tmp / "VOCdevkit" / "VOC2012"
    for i in VOC_TRAIN + VOC_VAL:
        save_image(base / "JPEGImages" / f"{i}.jpg", picture(24, 32))
        save_image(base / "SegmentationClassAug" / f"{i}.png", voc_mask(i, "sbd"))
    for i in VOC_TRAIN[:3] + VOC_VAL:
        save_image(base / "SegmentationClass" / f"{i}.png", voc_mask(i, "voc"))
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN[:3]) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (sets / "aug.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    return base


def sbd_tree(tmp: Path) -> Path:
    sbd = tmp / "benchmark_RELEASE"
    (sbd / "dataset" / "cls").mkdir(parents=True)
    for i in VOC_TRAIN + VOC_VAL:
        savemat(sbd / "dataset" / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": voc_mask(i, "sbd")}})
    (sbd / "dataset" / "train.txt").write_text("\n".join(VOC_TRAIN + VOC_VAL[:1]) + "\n")
    (sbd / "dataset" / "val.txt").write_text(VOC_VAL[1] + "\n")
    return sbd


CITY = [("jena", "jena_000001_000019"), ("ulm", "ulm_000002_000019"), ("aachen", "aachen_000003_000019")]


def cityscapes_standard(root: Path) -> Path:
    for split, rows in (("train", CITY), ("val", CITY[:1])):
        for city, stem in rows:
            save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", picture(16, 32))
            save_mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", 16, 32)
    return root


def cityscapes_cps(root: Path) -> Path:
    for split, rows in (("train", CITY), ("val", CITY[:1])):
        for _, stem in rows:
            save_image(root / "images" / split / f"{stem}.png", picture(16, 32))
            save_mask(root / "segmentation" / split / f"{stem}_gtFine.png", 16, 32)
        (root / "config_new").mkdir(exist_ok=True)
        (root / "config_new" / f"{split}.txt").write_text("".join(
            f"/images/{split}/{s}.png\t/segmentation/{split}/{s}_gtFine.png\n" for _, s in rows))
    return root


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def stems(pairs) -> list[str]:
    return [img.stem for img, _ in pairs]


def rel(pairs, root: Path) -> list[tuple[str, str | None]]:
    return [(img.relative_to(root).as_posix(), None if m is None else m.relative_to(root).as_posix())
            for img, m in pairs]


# ------------------------------------------------------------------------------------ results table


def exif_photo(tmp: Path, orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """(what read_image gives, the stored pixels as a viewer turns them) of a 64x48 (WxH) photo."""
    p = save_image(tmp / "phone.jpg", picture(48, 64), orientation)
    with Image.open(p) as img:
        stored = np.array(img)  # PIL itself does not turn it
    turned = {6: np.rot90(stored, -1), 8: np.rot90(stored, 1), 3: np.rot90(stored, 2), 1: stored}[orientation]
    return read_image(p), turned


def grey16(tmp: Path, suffix: str) -> tuple[int, int, int]:
    """(distinct levels, darkest, brightest) read from a 16-bit greyscale image of 61 levels 0..60000."""
    a = (np.arange(61, dtype=np.uint16) * 1000).reshape(1, 61).repeat(3, 0)
    got = read_image(save_image(tmp / f"grey16{suffix}", a))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    return len(np.unique(got)), int(got.min()), int(got.max())


def formats_tree(tmp: Path) -> list[tuple[str, bool]]:
    root = folder_tree(tmp / "t", {"a.webp": (30, 40), "b.bmp": (30, 40), "c.tif": (30, 40), "d.gif": (30, 40),
                                   "e.JPG": (30, 40), "f.png": (30, 40)}, masked=("a", "b", "c", "d", "e"))
    (root / "images" / "._a.webp").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: skipped
    (root / "images" / "notes.txt").write_text("not an image")
    train, _ = folder_pairs(root)
    return [(img.name, m is not None) for img, m in train]


def spaced_folder(tmp: Path, listed: str, bom: bool = False) -> tuple[list[str], list[str]]:
    root = folder_tree(tmp / "t", {"my photo.png": (30, 40), "im 2.png": (30, 40), "im3.png": (30, 40)})
    write(root / "labeled.txt", listed, bom)
    lab, unl, _ = folder_splits(root)
    return stems(lab), stems(unl)


def voc_from_list(tmp: Path, text: str) -> tuple[list[str], int]:
    mmseg_tree(tmp)
    lab, unl, _ = voc_splits(tmp, labeled_list=write(tmp / "labeled.txt", text))
    return stems(lab), len(unl)


def city_from_list(tmp: Path, make: Callable[[Path], Path], text: str, unlabeled: str | None = None):
    root = make(tmp / "city")
    lab, unl, _ = cityscapes_splits(root, labeled_list=write(tmp / "l.txt", text),
                                    unlabeled_list=None if unlabeled is None else write(tmp / "u.txt", unlabeled))
    return rel(lab, root), len(unl)


def mmseg_masks(tmp: Path) -> tuple[set, set, list[str]]:
    """(folders of the train masks, folders of the val masks, the train ids) voc_splits reads."""
    mmseg_tree(tmp)
    lab, _, val = voc_splits(tmp, labeled=None)
    return {m.parent.name for _, m in lab}, {m.parent.name for _, m in val}, stems(lab)


def checked(tmp: Path, root: Path, dataset: str, labeled: str, unlabeled: str | None = None):
    """(problems as 'split | file name | problem', counts) of check_data with split lists."""
    rep = prepare.check_data(root, dataset, progress=False, labeled_list=write(tmp / "labeled.txt", labeled),
                             unlabeled_list=None if unlabeled is None else write(tmp / "unlabeled.txt", unlabeled))
    probs = [f"{s} | {Path(f).name} | {p}".replace(str(tmp), "TMP") for s, f, p in rep["problems"].itertuples(index=False)]
    return probs, rep["counts"]["images"].tolist()


def list_not_recorded(tmp: Path) -> str:
    cfg = make_config("voc", labeled_list=str(write(tmp / "l.txt", "2007_000001\n")))
    return cfg.labeled


@dataclass
class Result:
    run: Callable[[Path], Any]
    expected: Any
    mark: Any = None


RESULTS: dict[str, Result] = {
    # photos
    "exif_6_is_read_as_viewers_show_it": Result(
        lambda t: (lambda got, want: (got.shape, np.array_equal(got, want)))(*exif_photo(t, 6)), ((64, 48, 3), True)),
    "exif_8_is_read_as_viewers_show_it": Result(
        lambda t: (lambda got, want: (got.shape, np.array_equal(got, want)))(*exif_photo(t, 8)), ((64, 48, 3), True)),
    "exif_3_is_read_upside_down_turned": Result(
        lambda t: (lambda got, want: (got.shape, np.array_equal(got, want)))(*exif_photo(t, 3)), ((48, 64, 3), True)),
    "grey_16bit_png_is_scaled_not_clipped": Result(lambda t: grey16(t, ".png"), (61, 0, 233)),
    "grey_16bit_tiff_is_scaled_not_clipped": Result(lambda t: grey16(t, ".tif"), (61, 0, 233)),
    "grey_16bit_pgm_is_scaled_not_clipped": Result(lambda t: grey16(t, ".pgm"), (61, 0, 233)),
    "every_format_pil_reads_is_an_image": Result(
        formats_tree, [("a.webp", True), ("b.bmp", True), ("c.tif", True), ("d.gif", True), ("e.JPG", True),
                       ("f.png", False)]),
    "classes_txt_with_byte_order_mark": Result(
        lambda t: (folder_class_names(plain_tree(t / "t", classes="\ufeffbackground\nsquare\ndisc\n"))[0],
                   make_config("smoke", dataset="folder", data_root=str(t / "t")).class_names[0]),
        ("background", "background")),
    # names and lists
    "labeled_txt_with_byte_order_mark": Result(lambda t: spaced_folder(t, "im3\n", bom=True),
                                               (["im3"], ["im 2", "my photo"])),
    "list_names_an_image_with_a_space": Result(lambda t: spaced_folder(t, "my photo\nim 2\n"),
                                               (["my photo", "im 2"], ["im3"])),
    "list_names_an_image_path_with_a_space": Result(
        lambda t: spaced_folder(t, "images/my photo.png masks/my photo.png\n"), (["my photo"], ["im 2", "im3"])),
    "list_with_a_second_column_reads_its_first_word": Result(lambda t: spaced_folder(t, "im3 1\n"),
                                                              (["im3"], ["im 2", "my photo"])),
    # other codebases' lists
    "unimatch_voc_list": Result(
        lambda t: voc_from_list(t, "JPEGImages/2007_000002.jpg SegmentationClass/2007_000002.png\n"
                                   "JPEGImages/2008_000010.jpg SegmentationClass/2008_000010.png\n"),
        (["2007_000002", "2008_000010"], 2)),
    "u2pl_and_cps_voc_list_of_ids": Result(lambda t: voc_from_list(t, "2007_000003\r\n2007_000001"),
                                           (["2007_000003", "2007_000001"], 2)),
    "u2pl_cityscapes_list_of_image_paths": Result(
        lambda t: city_from_list(t, cityscapes_standard, "leftImg8bit/train/ulm/ulm_000002_000019_leftImg8bit.png\n",
                                 "leftImg8bit/train/jena/jena_000001_000019_leftImg8bit.png\n"),
        ([("leftImg8bit/train/ulm/ulm_000002_000019_leftImg8bit.png",
           "gtFine/train/ulm/ulm_000002_000019_gtFine_labelTrainIds.png")], 1)),
    "unimatch_cityscapes_list_on_cps_layout": Result(
        lambda t: city_from_list(t, cityscapes_cps, "leftImg8bit/train/ulm/ulm_000002_000019_leftImg8bit.png "
                                                    "gtFine/train/ulm/ulm_000002_000019_gtFine_labelTrainIds.png\n"),
        ([("images/train/ulm_000002_000019.png", "segmentation/train/ulm_000002_000019_gtFine.png")], 2)),
    "cps_cityscapes_pairs_on_standard_layout": Result(
        lambda t: city_from_list(t, cityscapes_standard,
                                 "/images/train/ulm_000002_000019.png\t/segmentation/train/ulm_000002_000019_gtFine.png\n"),
        ([("leftImg8bit/train/ulm/ulm_000002_000019_leftImg8bit.png",
           "gtFine/train/ulm/ulm_000002_000019_gtFine_labelTrainIds.png")], 2)),
    # other codebases' trees
    "mmseg_tree_scores_val_on_vocs_own_masks": Result(
        mmseg_masks, ({"SegmentationClassAug"}, {"SegmentationClass"}, VOC_TRAIN)),
    "voc_aug_replaces_and_counts_sbd_masks_of_voc_ids": Result(
        lambda t: (lambda r: (r.written, r.kept, r.replaced, r.from_voc, r.from_sbd))(
            prepare.voc_aug(mmseg_tree(t), sbd_tree(t), t / "VOCdevkit" / "VOC2012", progress=False)),
        (5, 1, 5, 5, 1)),
    "check_a_list_against_the_tree": Result(
        lambda t: checked(t, mmseg_tree(t), "voc", "2007_000001\n2007_000001\n2007_000099\n2007_000004\n",
                          "2007_000001\n2007_000002\n"),
        (["labeled | labeled.txt | '2007_000001' is listed 2 times",
          "labeled | labeled.txt | '2007_000099': not found: TMP/VOCdevkit/VOC2012/JPEGImages/2007_000099.jpg",
          "labeled | labeled.txt | '2007_000004' is a validation image (a run would train on what it is scored on)",
          "labeled | labeled.txt | '2007_000001' is also in the unlabeled list TMP/unlabeled.txt"], [0, 0, 2])),
    "check_a_good_list_counts_what_the_run_reads": Result(
        lambda t: checked(t, mmseg_tree(t), "voc", "JPEGImages/2007_000002.jpg SegmentationClass/2007_000002.png\n"),
        ([], [1, 3, 2])),
    "check_a_folder_list_names_its_missing_image": Result(
        lambda t: checked(t, plain_tree(t / "t", n=4), "folder", "im0\nghost\n"),
        (["labeled | labeled.txt | 'ghost': 'ghost' is not a training image of the folder (expected a name from "
          "images/ without extension, not one held out for validation)"], [0, 0, 1])),
    "a_run_from_a_list_does_not_record_a_fraction": Result(
        lambda t: list_not_recorded(t) == "1/16", False,
        pytest.mark.xfail(strict=True, reason="config.dataset_defaults keeps the preset's labeled='1/16' when a "
                                              "split list is given (config.py is not the data package's)")),
}


# ----------------------------------------------------------------------------------- commands table


def exif_folder(t: Path, mask_as_shown: bool) -> Path:
    """A folder whose photo is stored 64x48 with EXIF orientation 6 (shown 48x64), its mask drawn on
    the image as shown (48 wide, 64 high) or on the stored pixels."""
    root = plain_tree(t / "t", n=2)
    save_image(root / "images" / "phone.jpg", picture(48, 64), orientation=6)
    save_mask(root / "masks" / "phone.png", *((64, 48) if mask_as_shown else (48, 64)))
    return root


def broken(t: Path, what: str) -> Path:
    root = plain_tree(t / "t", n=3)
    if what == "bmp_mask":
        save_mask(root / "masks" / "im0.png", 30, 40).rename(root / "masks" / "im0.bmp")
        Image.open(root / "masks" / "im0.bmp").save(root / "masks" / "im0.bmp", format="BMP")
    elif what == "jpeg_mask":
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "masks" / "im1.jpg")
    elif what == "corrupt_webp":
        (root / "images" / "bad.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 garbage")
    elif what == "grey_32bit":
        Image.fromarray(np.array([[0, 70_000]] * 30, np.int32).repeat(20, 1)).save(root / "images" / "deep.tif")
    elif what == "heic_photo":  # no reader for it in PIL without a plugin
        (root / "images" / "IMG_0001.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
        save_mask(root / "masks" / "IMG_0001.png", 30, 40)
    elif what == "webp_mask_orphan_before":
        save_image(root / "images" / "w.webp", picture(30, 40))
        save_mask(root / "masks" / "w.png", 30, 40)
    return root


@dataclass
class Command:
    build: Callable[[Path], list[str]]     # makes the input in tmp_path, gives the command line
    code: int
    out: str | None = None                  # regex that stdout must match
    err: str | None = None                  # regex of the one stderr line (exit 2)
    writes: tuple[str, ...] = ()            # paths under tmp_path the command may change
    after: Callable[[Path], Any] | None = None  # the result left on disk ...
    after_expected: Any = None              # ... and what it must be
    mark: Any = None


def data_check(build: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda t: ["data", "check", str(build(t)), "--quiet", *extra]


def refused(build: Callable[[Path], Path], out: str) -> Command:
    """``data check`` of a tree with one problem: listed as ``out``, then exit 2 with the summary line."""
    return Command(data_check(build), 2, out=out, err=r"problem\(s\) in the folder data set")


def voc_aug_into_mmseg(t: Path) -> list[str]:
    mmseg_tree(t)
    sbd_tree(t)
    return ["data", "voc-aug", "--voc", str(t / "VOCdevkit" / "VOC2012"), "--sbd", str(t / "benchmark_RELEASE"),
            "--out", str(t / "VOCdevkit" / "VOC2012"), "--quiet"]


def aug_val_masks_are_vocs(t: Path) -> bool:
    base = t / "VOCdevkit" / "VOC2012"
    return all(np.array_equal(np.array(Image.open(base / "SegmentationClassAug" / f"{i}.png")),
                              np.array(Image.open(base / "SegmentationClass" / f"{i}.png"))) for i in VOC_VAL)


def folder_default_train(t: Path) -> list[str]:
    # 6 images, 4 with masks: 1 held out for validation, 3 labeled, 2 unlabeled
    root = folder_tree(t / "t", {f"im{i}.png": (30, 40) for i in range(6)}, masked=("im0", "im1", "im2", "im3"),
                       val=0)
    return ["train", "--dataset", "folder", "--data-root", str(root), "--quiet", "--out", str(t / "run")]


COMMANDS: dict[str, Command] = {
    "folder_default_with_two_unlabeled_images_trains_and_saves": Command(
        folder_default_train, 0, out=r"mIoU .*\n.*\nresults in ", writes=("run",),
        after=lambda t: sorted(p.name for p in (t / "run").iterdir() if p.name in ("checkpoint.pt", "metrics.json")),
        after_expected=["checkpoint.pt", "metrics.json"]),
    "exif_photo_with_its_mask_drawn_as_shown": Command(
        data_check(lambda t: exif_folder(t, mask_as_shown=True)), 0, out=r"no problems found"),
    "exif_photo_with_its_mask_drawn_on_the_stored_pixels": Command(
        data_check(lambda t: exif_folder(t, mask_as_shown=False)), 2,
        out=r"masks/phone\.png\s+label size 64x48 differs from image \S+phone\.jpg size 48x64 as viewers show it "
            r"\(EXIF orientation 6 turns the stored 64x48 pixels\)",
        err=r"t: 1 problem\(s\) in the folder data set \(listed above\); expected none before training"),
    "webp_image_with_its_mask": Command(data_check(lambda t: broken(t, "webp_mask_orphan_before")), 0,
                                        out=r"labeled\s+4\n"),
    "photo_in_a_format_pil_cannot_read_is_named_not_its_mask": refused(
        lambda t: broken(t, "heic_photo"),
        r"images/IMG_0001\.heic\s+has a mask \(IMG_0001\.png\) but is no format PIL reads here"),
    "bmp_mask_is_refused_by_name": refused(
        lambda t: broken(t, "bmp_mask"), r"masks/im0\.bmp\s+a mask must be a PNG \(lossless\), not \.bmp"),
    "jpeg_mask_is_refused_as_lossy": refused(
        lambda t: broken(t, "jpeg_mask"),
        r"masks/im1\.jpg\s+a mask must be a PNG \(lossless\), not \.jpg \(lossy: class ids blur at the edges\)"),
    "corrupt_webp_is_named": refused(lambda t: broken(t, "corrupt_webp"), r"images/bad\.webp\s+cannot read image"),
    "grey_beyond_16_bits_is_named": refused(
        lambda t: broken(t, "grey_32bit"),
        r"images/deep\.tif\s+greyscale values 0\.\.70000 do not fit 16 bits; expected an 8- or 16-bit image"),
    "folder_list_naming_a_missing_image": refused(
        lambda t: (lambda r: (write(r / "labeled.txt", "im0\nmy ghost\n"), r)[1])(plain_tree(t / "t", n=4)),
        r"labeled\.txt\s+'my ghost' is not a training image of the folder"),
    "mmseg_tree_check_warns_of_sbd_val_masks": Command(
        data_check(lambda t: (mmseg_tree(t), t)[1]), 0,
        out=r"2 warning\(s\) \(the run is not stopped by these\):\n(.*\n)*.*SegmentationClassAug/2007_000004\.png\s+"
            r"differs from VOC's own \S+/SegmentationClass/2007_000004\.png in \d+ pixels \(no 255 borders: SBD's\?\)"),
    "voc_aug_into_an_mmseg_tree_replaces_sbd_masks_of_voc_ids": Command(
        voc_aug_into_mmseg, 0, out=r"SegmentationClassAug: 5 masks written, 1 kept \(5 from VOC SegmentationClass, "
                                   r"1 from SBD cls\)",
        writes=("VOCdevkit/VOC2012/SegmentationClassAug", "VOCdevkit/VOC2012/ImageSets/Segmentation/trainaug.txt"),
        after=aug_val_masks_are_vocs, after_expected=True),
    "data_check_reads_a_split_list": Command(
        data_check(lambda t: (mmseg_tree(t), t)[1], "--labeled-list", "TMPLIST"), 0, out=r"labeled\s+1\n"),
}


# ------------------------------------------------------------------------------------------ running


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """tmp_path/case as the row's folder; HOME, the kit's cache, torch's and matplotlib's caches and
    the working folder inside tmp_path; afterwards nothing written to HOME or the working folder and
    nothing new in the repository's root."""
    for name in ("home", "cache", "cwd"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CPCL_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home" / "torch"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "cache" / "matplotlib"))  # its font list, if first imported here
    monkeypatch.chdir(tmp_path / "cwd")
    repo_root = {p.name for p in REPO.iterdir()}
    case = tmp_path / "case"
    case.mkdir()
    yield case
    assert {p.name for p in REPO.iterdir()} - repo_root == set()
    for name in ("home", "cwd"):
        assert _files(tmp_path / name) == {}, f"the run wrote into {name}"


def _rows(table: dict) -> list:
    return [pytest.param(name, marks=[row.mark] if row.mark else [], id=name) for name, row in table.items()]


@pytest.mark.parametrize("name", _rows(RESULTS))
def test_result(name, sandbox):
    row = RESULTS[name]
    got = row.run(sandbox)
    assert got == row.expected


@pytest.mark.parametrize("name", _rows(COMMANDS))
def test_command(name, sandbox, capsys):
    row = COMMANDS[name]
    argv = row.build(sandbox)
    if "TMPLIST" in argv:  # a list naming one image of the tree, beside it
        argv[argv.index("TMPLIST")] = str(write(sandbox / "list.txt", "2007_000002\n"))
    before = _files(sandbox)
    code = cli.main(argv)
    res = capsys.readouterr()
    assert code == row.code, res.err
    if row.out is not None:
        assert re.search(row.out, res.out), res.out
    if row.code == 2:
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.err, res.err
        assert re.search(row.err, lines[0]), lines[0]
    else:
        assert "Traceback" not in res.err and "error:" not in res.err, res.err
    after = _files(sandbox)
    allowed = lambda path: any(path == w or path.startswith(w + "/") for w in row.writes)  # noqa: E731
    assert {k: v for k, v in before.items() if not allowed(k)} == {k: v for k, v in after.items() if not allowed(k)}
    if row.after is not None:
        assert row.after(sandbox) == row.after_expected

