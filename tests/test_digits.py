import dataclasses

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from cpcl_kit.data import digits
from cpcl_kit.data.digits import (DIGIT_CLASS_NAMES, DigitScenes, SceneSpec, digit_pools, load_digit_bank, make_scenes,
                             pretrain_pool)
from cpcl_kit.data.outlines import boundary_band
from cpcl_kit.errors import KitError

SMALL = SceneSpec(size=48, digits=(1, 2), digit_px=(20, 30))


def test_class_names():
    assert DIGIT_CLASS_NAMES == ["background"] + [str(d) for d in range(10)]


def test_pools_disjoint_cover_and_stratified():
    train, val = digit_pools()
    pre = pretrain_pool()
    _, labels = load_digit_bank()
    assert not set(train) & set(val) and not set(pre) & set(train) and not set(pre) & set(val)
    assert len(train) + len(val) + len(pre) == len(labels) == 1797
    assert abs(len(pre) / 1797 - 0.35) < 0.01
    assert abs(len(val) / (1797 - len(pre)) - 0.3) < 0.01
    for d in range(10):  # stratified: each digit keeps ~35 % for pretraining, ~30 % of the rest for val
        n_d = np.sum(labels == d)
        assert abs(np.sum(labels[pre] == d) / n_d - 0.35) < 0.01
        assert abs(np.sum(labels[val] == d) / (n_d - np.sum(labels[pre] == d)) - 0.3) < 0.01


def test_pools_are_fixed_and_checked():
    assert np.array_equal(pretrain_pool(), pretrain_pool())
    assert all(np.array_equal(a, b) for a, b in zip(digit_pools(), digit_pools()))
    with pytest.raises(KitError, match="pretrain_fraction"):
        digit_pools(pretrain_fraction=1.0)


def test_make_scenes_from_another_bank():
    images = np.zeros((2, 8, 8), np.float32)
    images[:, 1:7, 2:6] = 16  # a filled box, labelled 3 and 5
    _, m = make_scenes(4, SMALL, [0, 1], seed=0, bank=(images, np.array([3, 5])))
    assert set(np.unique(m)) <= {0, 4, 6} and (m > 0).any()


def test_make_scenes_shapes_and_determinism():
    pool, _ = digit_pools()
    im, m = make_scenes(6, SMALL, pool, seed=3)
    assert im.shape == (6, 48, 48, 3) and im.dtype == np.uint8
    assert m.shape == (6, 48, 48) and m.dtype == np.uint8
    assert m.max() <= 10 and (m > 0).any() and (m == 0).any()
    im2, m2 = make_scenes(6, SMALL, pool, seed=3)
    assert np.array_equal(im, im2) and np.array_equal(m, m2)
    im3, _ = make_scenes(6, SMALL, pool, seed=4)
    assert not np.array_equal(im, im3)


def test_scene_labels_come_from_the_pool():
    _, labels = load_digit_bank()
    only_sevens = np.flatnonzero(labels == 7)
    _, m = make_scenes(5, SMALL, only_sevens, seed=0)
    assert set(np.unique(m)) == {0, 8}  # class id = digit + 1


def test_default_spec_background_share():
    pool, _ = digit_pools()
    _, m = make_scenes(100, SceneSpec(), pool, seed=0)
    assert 0.6 < np.mean(m == 0) < 0.8


def test_stroke_knob_thickens_digits():
    pool, _ = digit_pools()
    _, thin = make_scenes(20, SceneSpec(stroke=0), pool, seed=1)
    _, thick = make_scenes(20, SceneSpec(stroke=2), pool, seed=1)
    assert np.mean(thick > 0) > np.mean(thin > 0)


def test_void_scenes_are_the_same_scenes_with_outlines_void():
    pool, _ = digit_pools()
    im0, m0 = make_scenes(8, SMALL, pool, seed=2)
    im1, m1 = make_scenes(8, dataclasses.replace(SMALL, void=1), pool, seed=2)
    assert np.array_equal(im0, im1)
    assert np.array_equal(m1, np.where(boundary_band(torch.from_numpy(m0), 1).numpy(), 255, m0))
    assert 0.05 < np.mean(m1 == 255) < 0.25 and set(np.unique(m1)) - {255} <= set(range(11))
    with pytest.raises(KitError, match="void"):
        make_scenes(1, dataclasses.replace(SMALL, void=9), pool, 0)


def test_bad_spec_and_pool():
    pool, _ = digit_pools()
    with pytest.raises(KitError, match="digit_px"):
        make_scenes(1, SceneSpec(size=32, digit_px=(20, 40)), pool, 0)
    with pytest.raises(KitError, match="digits"):
        make_scenes(1, SceneSpec(digits=(3, 1)), pool, 0)
    with pytest.raises(KitError, match="pool"):
        make_scenes(1, SceneSpec(), [5000], 0)


def test_dataset_items_and_default_transform():
    ds = DigitScenes("val", n=4, spec=SMALL)
    x, y = ds[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert y.shape == (48, 48) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 3  # normalised, not 0..255
    assert ds.images.shape == (4, 48, 48, 3) and ds.masks.shape == (4, 48, 48)
    assert len(ds) == 4 and ds.num_classes == 11


def test_dataset_passes_tv_tensors_to_transform():
    seen = {}

    def spy(image, mask):
        seen["types"] = (type(image), type(mask), image.dtype, mask.dtype, tuple(image.shape))
        return image, mask

    DigitScenes("train", n=2, spec=SMALL, transform=spy)[1]
    assert seen["types"] == (tv_tensors.Image, tv_tensors.Mask, torch.uint8, torch.int64, (3, 48, 48))


def test_train_and_val_scenes_differ():
    a = DigitScenes("train", n=3, spec=SMALL, seed=0)
    b = DigitScenes("val", n=3, spec=SMALL, seed=0)
    assert not np.array_equal(a.images, b.images)


def test_disk_cache_roundtrip(tmp_path, monkeypatch):
    a = DigitScenes("train", n=3, spec=SMALL, seed=11, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    digits._MEMORY_CACHE.clear()

    def boom(*args, **kwargs):
        raise AssertionError("should have been read from the disk cache")

    monkeypatch.setattr(digits, "make_scenes", boom)
    b = DigitScenes("train", n=3, spec=SMALL, seed=11, cache_dir=tmp_path)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)


def test_a_damaged_disk_cache_is_made_again_with_one_line(tmp_path, capsys):
    a = DigitScenes("train", n=3, spec=SMALL, seed=12, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    digits._MEMORY_CACHE.clear()
    b = DigitScenes("train", n=3, spec=SMALL, seed=12, cache_dir=tmp_path)
    err = capsys.readouterr().err.strip()
    assert err == f"cpcl-kit: the cached scenes {path} are damaged; generating them again"
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    digits._MEMORY_CACHE.clear()
    DigitScenes("train", n=3, spec=SMALL, seed=12, cache_dir=tmp_path)  # the new file reads back
    assert capsys.readouterr().err == ""


def test_the_kits_data_keep_their_scenes_in_the_cache(tmp_path, monkeypatch):
    """build_data keeps the scenes it draws in the kit's cache, so the next process reads them (the
    same arrays); a cache it cannot write costs only the drawing."""
    from cpcl_kit.config import make_config
    from cpcl_kit.data.build import build_data

    cfg = make_config("smoke", method="cpcl", seed=31)
    monkeypatch.setenv("CPCL_KIT_CACHE", str(tmp_path / "cache"))
    digits._MEMORY_CACHE.clear()
    first = build_data(cfg)
    assert len(list((tmp_path / "cache" / "scenes").glob("*.npz"))) == 2  # train and val
    digits._MEMORY_CACHE.clear()
    with monkeypatch.context() as m:
        m.setattr(digits, "make_scenes", lambda *a, **k: pytest.fail("drawn again, not read from the cache"))
        again = build_data(cfg)
    for a, b in ((first.labeled.dataset, again.labeled.dataset), (first.val, again.val)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("CPCL_KIT_CACHE", str(tmp_path / "not-a-folder"))  # no folder can be made there
    digits._MEMORY_CACHE.clear()
    assert np.array_equal(build_data(cfg).val.images, first.val.images)
    monkeypatch.setenv("CPCL_KIT_CACHE", str(tmp_path / "full"))  # a folder whose files cannot be written

    def full(path, *a, **k):
        raise KitError(f"{path}: cannot write (No space left on device); no file was written")

    monkeypatch.setattr(digits, "write_atomic", full)
    digits._MEMORY_CACHE.clear()
    assert np.array_equal(build_data(cfg).val.images, first.val.images)
    digits._MEMORY_CACHE.clear()


def test_bad_split_and_n():
    with pytest.raises(KitError, match="split"):
        DigitScenes("test", n=2)
    with pytest.raises(KitError, match="n"):
        DigitScenes("train", n=0)
