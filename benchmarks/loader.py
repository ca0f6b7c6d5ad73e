"""How many training images one loader worker prepares per second at the Cityscapes preset's size.

    .venv/bin/python benchmarks/loader.py                  # writes benchmarks/results/loader-cpu.json/.md

One loader worker is one process with one torch thread: it reads an image and its mask (PNG),
applies the preset's training transform (random scale from the preset's scales, crop, flip) and
hands the crop to the batch. The images are 2048 x 1024 PNGs written here first (smooth shapes with
a little noise, so that they compress about as a street photo does), their masks 19-class maps.
Reported per image: the decode (image and mask), the transform, and the whole, as images per second
per worker, and what a GPU step then needs: the preset's 16 + 16 + 16 images per iteration take
that many worker-seconds. Two ways, interleaved: the uint8 crop the kit's loader ships, and the
float32 crop normalised in the worker that it shipped before.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cpcl_kit.config import make_config  # noqa: E402
from cpcl_kit.data.build import train_transform_of  # noqa: E402
from cpcl_kit.data.images import SegmentationFiles, read_image, read_mask  # noqa: E402
from cpcl_kit.files import machine, write_json, write_text  # noqa: E402
from cpcl_kit.provenance import code_version, command_line  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def street_like(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and a 19-class mask of smooth regions with mild noise."""
    mask = np.zeros((h, w), np.uint8)
    img = np.zeros((h, w, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    img[...] = (yy[..., None] / h * 120 + xx[..., None] / w * 60 + np.array([40, 50, 60]))
    for _ in range(30):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        hh, ww = rng.integers(h // 20, h // 3), rng.integers(w // 20, w // 3)
        c = int(rng.integers(0, 19))
        mask[y0:y0 + hh, x0:x0 + ww] = c
        img[y0:y0 + hh, x0:x0 + ww] = rng.integers(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_tree(folder: Path, n: int, size: tuple[int, int]) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        img, mask = street_like(rng, size[1], size[0])
        pi, pm = folder / f"{i:03d}_leftImg8bit.png", folder / f"{i:03d}_gtFine_labelTrainIds.png"
        Image.fromarray(img).save(pi)
        Image.fromarray(mask).save(pm)
        pairs.append((pi, pm))
    return pairs


WAYS = {"uint8 crop (what the loader ships)": True, "float32 crop (normalised in the worker)": False}


def measure(pairs, cfg, repeats: int) -> dict:
    """Per way of ``WAYS`` (the deferred transform or not), interleaved image by image: medians of
    the decode, the whole item, and the bytes of one crop."""
    torch.set_num_threads(1)
    files = {way: SegmentationFiles(pairs, cfg.num_classes, train_transform_of(cfg, deferred=d))
             for way, d in WAYS.items()}
    decode, whole, nbytes = [], {way: [] for way in WAYS}, {}
    for r in range(repeats):
        for i, (image, mask) in enumerate(pairs):
            t = time.perf_counter()
            read_image(image), read_mask(mask, cfg.num_classes)
            decode.append(time.perf_counter() - t)
            for way, ds in files.items():
                torch.manual_seed(r * len(pairs) + i)
                t = time.perf_counter()
                crop, _ = ds[i]
                whole[way].append(time.perf_counter() - t)
                nbytes[way] = crop.numel() * crop.element_size()
    d = statistics.median(decode)
    per_iteration = cfg.batch_size + 2 * cfg.unlabeled_batch_size
    out = {"images": len(pairs) * repeats, "decode_s": round(d, 4), "images_per_iteration": per_iteration}
    for way, ts in whole.items():
        w = statistics.median(ts)
        out[way] = {"transform_s": round(w - d, 4), "per_image_s": round(w, 4),
                    "images_per_s_per_worker": round(1 / w, 2), "crop_mib": round(nbytes[way] / 2**20, 2),
                    "worker_seconds_per_iteration": round(per_iteration * w, 2)}
    return out


def markdown(res: dict) -> str:
    m = res["measured"]
    return "\n".join([
        "# Loader throughput at the Cityscapes preset's size", "",
        f"`{res['command']}`", "",
        f"One worker (one process, one torch thread) on {res['cpu']}, commit {res['commit']}: "
        f"{res['image_size'][0]} x {res['image_size'][1]} PNGs, crop {res['crop']}, scales {res['scales']}.", "",
        f"Decode (image and mask): {m['decode_s']} s per image; {m['images_per_iteration']} images per iteration.", "",
        "| crop | transform (s) | per image (s) | images/s per worker | crop (MiB) | worker-seconds per iteration |",
        "|---|---|---|---|---|---|",
        *[f"| {way} | {w['transform_s']} | {w['per_image_s']} | {w['images_per_s_per_worker']} | {w['crop_mib']} | "
          f"{w['worker_seconds_per_iteration']} |" for way, w in m.items() if isinstance(w, dict)], "",
        "A GPU step of the preset is fed only when num_workers is at least the worker-seconds per iteration "
        "divided by the step's seconds. The uint8 crop is converted and normalised on the device "
        "(`transforms.finish_images`).", ""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=6, help="distinct images written and read")
    p.add_argument("--repeats", type=int, default=3, help="passes over them (medians reported)")
    p.add_argument("--out", default=str(RESULTS / "loader-cpu.json"))
    args = p.parse_args(argv)
    cfg = make_config("cityscapes")
    size = (2048, 1024)
    with tempfile.TemporaryDirectory(prefix="cpcl-loader-") as tmp:
        pairs = write_tree(Path(tmp), args.images, size)
        measured = measure(pairs, cfg, args.repeats)
    res = {"commit": code_version()["commit"], "command": command_line(__file__, argv or sys.argv[1:]),
           "cpu": machine(), "torch": torch.__version__, "image_size": list(size), "crop": cfg.crop,
           "scales": list(cfg.scales), "measured": measured}
    out = Path(args.out)
    write_json(out, res)
    write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
