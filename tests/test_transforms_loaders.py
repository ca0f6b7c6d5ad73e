import itertools

import pytest
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from cpcl_kit.data.loaders import Batch, semi_supervised_batches, supervised_batches
from cpcl_kit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, train_transform, val_transform
from cpcl_kit.errors import KitError


def _pair(h=8, w=8):
    """Image whose red channel encodes the mask (red = 20 * label), to test joint geometry."""
    mask = torch.arange(h * w).reshape(h, w) % 7
    image = torch.stack([mask * 20, torch.full_like(mask, 50), torch.full_like(mask, 90)]).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def _red_labels(x):
    return torch.round(denormalize(x)[0] * 255 / 20).long()


# ------------------------------------------------------------------------------------- transforms


def test_val_transform_normalises_only():
    image, mask = _pair()
    x, y = val_transform()(image, mask)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x, (image.float() / 255 - mean) / std, atol=1e-6)
    assert type(x) is torch.Tensor and type(y) is torch.Tensor and y.dtype == torch.int64
    assert torch.equal(y, mask.as_subclass(torch.Tensor))
    assert torch.allclose(denormalize(x), image.float() / 255, atol=1e-6)


def test_train_transform_pads_with_zero_and_ignore():
    torch.manual_seed(0)
    x, y = train_transform(12, scales=None, flip=False)(*_pair())
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and y.shape == (12, 12) and y.dtype == torch.int64
    pad = y == 255
    assert int(pad.sum()) == 12 * 12 - 8 * 8
    assert bool((x[:, pad] == 0).all())


def test_flip_and_crop_keep_image_and_mask_aligned():
    t = train_transform(6, scales=None, flip=True)
    flipped = set()
    for s in range(12):
        torch.manual_seed(s)
        x, y = t(*_pair())
        assert torch.equal(_red_labels(x), y)  # image and mask moved together
        flipped.add(bool((y[0, 1] - y[0, 0]) % 7 != 1))
    assert flipped == {True, False}


def test_discrete_scales_mask_nearest():
    image, mask = _pair(8, 8)
    t = train_transform(40, scales=(0.5, 2.0), flip=False)
    sizes = set()
    for s in range(10):
        torch.manual_seed(s)
        _, y = t(image, mask)
        valid = y != 255
        sizes.add(int(valid.sum()))
        assert set(y[valid].unique().tolist()) <= set(range(7))  # no interpolated labels
    assert sizes == {16, 256}  # 4x4 and 16x16 content


def test_colour_augmentation_is_label_preserving():
    image = tv_tensors.Image(torch.tensor([10, 100, 200], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4).clone())
    mask = tv_tensors.Mask(torch.arange(16).reshape(4, 4) % 3)
    t = train_transform(4, scales=None, flip=False, colour=True)
    seen = set()
    for s in range(30):
        torch.manual_seed(s)
        x, y = t(image, mask)
        assert torch.equal(y, mask.as_subclass(torch.Tensor))
        rgb = tuple(torch.round(denormalize(x)[:, 0, 0] * 255).long().tolist())
        assert sorted(rgb) in ([10, 100, 200], [55, 155, 245])
        seen.add(rgb)
    assert len(seen) > 4


def test_train_transform_is_seeded_by_global_rng():
    t = train_transform(6)
    torch.manual_seed(3)
    a = t(*_pair())
    torch.manual_seed(3)
    b = t(*_pair())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_transform_args():
    with pytest.raises(KitError, match="crop"):
        train_transform(0)
    with pytest.raises(KitError, match="scales"):
        train_transform(8, scales=(1.0, -2.0))
    with pytest.raises(KitError, match=r"crop_pad: unknown 'center', expected one of centre, random"):
        train_transform(8, crop_pad="center")


def _official_margins(size: int, crop: int) -> tuple[int, int]:
    """furnace pad_image_to_shape: pad = crop - size; before = pad // 2, after = pad // 2 + pad % 2."""
    pad = max(crop - size, 0)
    return pad // 2, pad // 2 + pad % 2


@pytest.mark.parametrize("h, w", [(5, 7), (12, 3), (1, 1), (11, 12), (4, 9)])
def test_centre_pad_puts_a_small_image_exactly_in_the_middle(h, w):
    crop = 12
    image, mask = _pair(h, w)
    torch.manual_seed(0)
    x, y = train_transform(crop, scales=None, flip=False, crop_pad="centre")(image, mask)
    (top, bottom), (left, right) = _official_margins(h, crop), _official_margins(w, crop)
    assert top + h + bottom == crop and left + w + right == crop
    inside = torch.zeros(crop, crop, dtype=torch.bool)
    inside[top:top + h, left:left + w] = True
    assert torch.equal(y[inside].view(h, w), mask.as_subclass(torch.Tensor))
    assert bool((y[~inside] == 255).all())
    assert bool((x[:, ~inside] == 0).all())  # 0 after normalisation: the official image pad value
    x_ref, _ = val_transform()(image, mask)
    assert torch.equal(x[:, inside].view(3, h, w), x_ref)


def test_centre_pad_crops_a_larger_side_at_random_and_pads_the_other():
    crop, (h, w) = 12, (20, 6)
    rows = torch.arange(h).view(h, 1).expand(h, w)  # mask = row index, image red = 10 * row
    image = tv_tensors.Image(torch.stack([rows * 10, rows, rows]).to(torch.uint8))
    mask = tv_tensors.Mask(rows.clone())
    t = train_transform(crop, scales=None, flip=False, crop_pad="centre")
    left, right = _official_margins(w, crop)
    offsets = set()
    for s in range(60):
        torch.manual_seed(s)
        x, y = t(image, mask)
        assert bool((y[:, :left] == 255).all()) and bool((y[:, crop - right:] == 255).all())
        r = int(y[0, left])
        assert torch.equal(y[:, left:crop - right], rows[r:r + crop])  # a whole window, no padding
        red = torch.round(denormalize(x)[0] * 255 / 10).long()
        assert torch.equal(red[:, left:crop - right], rows[r:r + crop])  # the image moved with it
        offsets.add(r)
    assert offsets == set(range(h - crop + 1))  # every offset 0..L-crop, never beyond


def test_random_pad_is_the_original_pipeline():
    """crop_pad="random" (the default, and the CPU presets') is the pipeline from before the option."""
    from torchvision.transforms import v2

    from cpcl_kit.data.transforms import RandomScale

    before = v2.Compose([
        v2.RandomChannelPermutation(), v2.RandomInvert(p=0.5), v2.RandomHorizontalFlip(p=0.5),
        RandomScale((0.5, 1.0, 2.0)),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        v2.RandomCrop(12, pad_if_needed=True, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: 255}),
    ])
    default = train_transform(12, scales=(0.5, 1.0, 2.0), flip=True, colour=True)
    explicit = train_transform(12, scales=(0.5, 1.0, 2.0), flip=True, colour=True, crop_pad="random")
    for s in range(20):
        outs = []
        for t in (default, explicit):
            torch.manual_seed(s)
            outs.append(t(*_pair(10, 14)))
        torch.manual_seed(s)
        ref = before(*_pair(10, 14))
        for x, y in outs:
            assert torch.equal(x, ref[0].as_subclass(torch.Tensor)) and torch.equal(y, ref[1].as_subclass(torch.Tensor))


@pytest.mark.parametrize("preset", ["smoke", "demo", "benchmark", "voc", "cityscapes"])
def test_presets_choose_their_crop_padding(preset):
    from torchvision.transforms import v2

    from cpcl_kit.config import PAPER_PRESETS, make_config
    from cpcl_kit.data.build import train_transform_of
    from cpcl_kit.data.transforms import CentredPadCrop

    cfg = make_config(preset)
    last = train_transform_of(cfg).pipeline.transforms[-1]
    if preset in PAPER_PRESETS:
        assert cfg.crop_pad == "centre" and isinstance(last, CentredPadCrop)
    else:
        assert cfg.crop_pad == "random" and type(last) is v2.RandomCrop


# ---------------------------------------------------------------------------------------- loaders


class Indexed(Dataset):
    """Item i: image filled with i plus a torch.rand draw (stands in for augmentation), mask of i."""

    def __init__(self, n, known=True):
        self.n, self.known = n, known

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.full((3, 2, 2), float(i))
        x[1] = torch.rand(())
        return x, torch.full((2, 2), i if self.known else 255)


def _ids(t):
    return t[:, 0, 0, 0].long().tolist()


FIELDS = ("x_l", "y_l", "u0", "u0_mask", "u1", "u1_mask")


def _same(a: Batch, b: Batch):
    def equal(x, y):
        return x is None and y is None or x is not None and y is not None and torch.equal(x, y)

    return all(equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def test_batches_count_shapes_and_epoch_cover():
    out = list(semi_supervised_batches(Indexed(6), Indexed(9, known=False), 2, 3, iterations=6, seed=0))
    assert len(out) == 6
    b = out[0]
    # masks travel as uint8 and become int64 on the device; unlabeled images without any true label
    # send no mask at all
    assert b.x_l.shape == (2, 3, 2, 2) and b.y_l.dtype == torch.uint8 and b.u0.shape == (3, 3, 2, 2)
    assert b.u0_mask is None and b.u1_mask is None
    from cpcl_kit.engine.device import batch_to

    on = batch_to(b, torch.device("cpu"))
    assert on.y_l.dtype == torch.int64 and torch.equal(on.y_l, b.y_l.long()) and on.u0_mask is None
    lab = [i for b in out for i in _ids(b.x_l)]
    assert sorted(lab[:6]) == sorted(lab[6:]) == list(range(6))  # each epoch is a permutation
    u0 = [i for b in out for i in _ids(b.u0)]
    u1 = [i for b in out for i in _ids(b.u1)]
    assert sorted(u0[:9]) == list(range(9)) and u0 != u1  # independent shuffles
    assert lab[:6] != lab[6:12]  # reshuffled per epoch


def test_resume_and_workers_reproduce_batches():
    L, U = Indexed(5), Indexed(7)
    full = list(semi_supervised_batches(L, U, 2, iterations=7, seed=4))
    tail = list(semi_supervised_batches(L, U, 2, iterations=7, seed=4, start=4, num_workers=2))
    assert len(tail) == 3 and all(_same(a, b) for a, b in zip(full[4:], tail))
    other = list(semi_supervised_batches(L, U, 2, iterations=7, seed=5))
    assert not all(_same(a, b) for a, b in zip(full, other))
    # augmentation draws differ between samples yet are reproducible
    draws = torch.cat([b.x_l[:, 1, 0, 0] for b in full])
    assert len(set(draws.tolist())) == len(draws)


def test_without_pairs_u0_is_the_same_and_u1_is_not_loaded():
    L, U = Indexed(5), Indexed(7)
    pairs = list(semi_supervised_batches(L, U, 2, iterations=5, seed=3))
    single = list(semi_supervised_batches(L, U, 2, iterations=5, seed=3, pairs=False))
    assert all(b.u1 is None and b.u1_mask is None for b in single)
    assert all(torch.equal(a.x_l, b.x_l) and torch.equal(a.u0, b.u0) and torch.equal(a.u0_mask, b.u0_mask)
               for a, b in zip(pairs, single))


def test_loading_leaves_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    list(semi_supervised_batches(Indexed(4), Indexed(4), 2, iterations=3, seed=0))
    assert torch.equal(state, torch.get_rng_state())


def test_supervised_batches_match_semi_supervised_labeled_stream():
    L = Indexed(5)
    semi = list(semi_supervised_batches(L, Indexed(3), 2, iterations=4, seed=1))
    sup = list(supervised_batches(L, 2, iterations=4, seed=1))
    assert all(torch.equal(a.x_l, b.x_l) and b.u0 is None and b.u1_mask is None for a, b in zip(semi, sup))


def test_batch_to_keeps_none():
    b = Batch(torch.zeros(2, 3, 2, 2), torch.zeros(2, 2, 2, dtype=torch.long))
    moved = b.to("cpu")
    assert moved.u0 is None and torch.equal(moved.x_l, b.x_l)


def test_loader_bad_input():
    L, U = Indexed(4), Indexed(4)
    with pytest.raises(KitError, match="batch_size: expected a batch size >= 2"):
        semi_supervised_batches(L, U, 1, iterations=2)
    with pytest.raises(KitError, match="unlabeled_batch_size"):
        semi_supervised_batches(L, U, 2, unlabeled_batch_size=1, iterations=2)
    with pytest.raises(KitError, match="unlabeled_ds: the data set is empty"):
        semi_supervised_batches(L, Indexed(0), 2, iterations=2)
    with pytest.raises(KitError, match="batch_size"):
        supervised_batches(L, 1, iterations=2)
    with pytest.raises(KitError, match="start"):
        semi_supervised_batches(L, U, 2, iterations=2, start=3)


def test_digit_scenes_through_the_loader():
    from cpcl_kit.data.digits import DigitScenes, SceneSpec

    spec = SceneSpec(size=32, digits=(1, 2), digit_px=(16, 24))
    t = train_transform(24, flip=False, colour=True)
    L = DigitScenes("train", n=4, spec=spec, transform=t)
    U = DigitScenes("train", n=6, spec=spec, seed=1, transform=t)
    b = next(itertools.islice(semi_supervised_batches(L, U, 2, iterations=3, seed=0), 1, None))
    assert b.x_l.shape == (2, 3, 24, 24) and b.u1_mask.shape == (2, 24, 24)
    assert int(b.y_l[b.y_l != 255].max()) <= 10


@pytest.mark.parametrize("crop_pad", ["random", "centre"])
def test_deferred_crops_finish_to_the_same_values(crop_pad):
    """A deferred transform ships uint8 crops [4, crop, crop] (RGB and a content flag, 0 on the
    padding); ``finish_images`` on a batch of them gives the undeferred transform's float crops bit
    for bit, padding included, from the same draws."""
    from cpcl_kit.data.transforms import finish_images

    kw = dict(scales=(0.5, 1.0, 2.0), flip=True, colour=True, crop_pad=crop_pad)
    plain, deferred = train_transform(12, **kw), train_transform(12, deferred=True, **kw)
    padded = 0
    for s in range(20):
        torch.manual_seed(s)
        x, y = plain(*_pair(10, 14))
        torch.manual_seed(s)
        u8, y8 = deferred(*_pair(10, 14))
        assert u8.dtype == torch.uint8 and u8.shape == (4, 12, 12) and torch.equal(y8, y)
        padded += int((u8[3] == 0).sum() > 0)
        assert torch.equal(finish_images(u8.unsqueeze(0))[0], x) and torch.equal(finish_images(x), x)
        assert torch.equal(u8[3] == 0, (x == 0).all(0) & (u8[3] == 0))  # the flag marks padding only
    assert 0 < padded < 20  # both kinds of draw were seen
    with pytest.raises(KitError, match=r"\[\.\.\., 4, H, W\]"):
        finish_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_training_loader_ships_uint8_and_batch_to_finishes():
    """build_data's training sets come through the loader as uint8 crops and uint8 masks (a quarter
    and an eighth of the float32 and int64 bytes); ``batch_to`` makes them the nets' float images."""
    from cpcl_kit.config import make_config
    from cpcl_kit.data.build import build_data
    from cpcl_kit.engine.device import batch_to

    cfg = make_config("smoke", method="cpcl")
    data = build_data(cfg)
    b = next(semi_supervised_batches(data.labeled, data.unlabeled, 2, iterations=1, seed=0))
    assert b.x_l.dtype == b.u0.dtype == b.y_l.dtype == torch.uint8 and b.x_l.shape[1] == 4
    f = batch_to(b, torch.device("cpu"))
    assert f.x_l.dtype == f.u1.dtype == torch.float32 and f.x_l.shape[1] == 3 and f.y_l.dtype == torch.long
