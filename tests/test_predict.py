"""Prediction on your own images (issue 29): ``cpcl_kit.predict`` gives the maps the evaluator would,
slides windows over large images, writes class-id PNGs that read back as the maps and overlays of the
image's size; ``python -m cpcl_kit predict`` ends every mistake in one line, exit 2."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cpcl_kit
from cpcl_kit.cli import main
from cpcl_kit.config import make_config
from cpcl_kit.data import build_data
from cpcl_kit.data.palette import palette_for, voc_palette
from cpcl_kit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cpcl_kit.engine import checkpoint
from cpcl_kit.engine.evaluate import predict_logits, window_starts
from cpcl_kit.engine.predict import Predictor, output_names, write_image, write_predictions
from cpcl_kit.engine.train import run_or_load
from cpcl_kit.errors import KitError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(iterations=2, log_every=2, checkpoint_every=2, n_train_scenes=32, n_val_scenes=4, eval_every=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-net (CPCL) smoke run of two iterations on the shipped digit backbone."""
    return run_or_load(make_config("smoke", **TINY), tmp_path_factory.mktemp("predict") / "cpcl", progress=False)


@pytest.fixture(scope="module")
def scenes(run):
    """(uint8 [H, W, 3] scenes, their normalised [3, H, W] tensors) of the run's validation set."""
    val = build_data(run.config).val
    return ([val.raw(i)[0].permute(1, 2, 0).numpy() for i in range(3)],
            [val[i][0] for i in range(3)])


@pytest.fixture
def scene_files(scenes, tmp_path):
    return [write_image(tmp_path / "in" / f"scene{i}.png", im) for i, im in enumerate(scenes[0])]


def test_voc_palette_is_the_devkits_colour_map():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == (0, 0, 0) and tuple(pal[1]) == (128, 0, 0) and tuple(pal[2]) == (0, 128, 0)
    assert tuple(pal[15]) == (192, 128, 128)  # person
    assert tuple(pal[20]) == (0, 64, 128)  # tvmonitor
    assert tuple(pal[255]) == (224, 224, 192)  # void
    assert palette_for("voc", 21) is not None and (palette_for("voc", 21) == pal).all()
    kit = palette_for("digits", 11)
    assert kit.dtype == np.uint8 and tuple(kit[0]) == (0, 0, 0) and len({tuple(c) for c in kit[:11]}) == 11


@pytest.mark.parametrize("branch", ["net1", "ensemble"])
def test_predict_equals_the_evaluators_argmax(run, scenes, scene_files, branch):
    """An independent path: the nets loaded here, the data set's own normalised tensors, the
    evaluator's scores; arrays and files of the same scenes give the same maps."""
    cfg, nets = checkpoint.load_nets(run.out_dir / "checkpoint.pt")
    models = nets[0] if branch == "net1" else nets
    expected = [predict_logits(models, x[None], crop=cfg.eval_crop, stride_ratio=cfg.eval_stride,
                               num_classes=cfg.num_classes).argmax(dim=1)[0].numpy() for x in scenes[1]]
    from_arrays = cpcl_kit.predict(run.out_dir, scenes[0], branch=branch, progress=False)
    from_files = cpcl_kit.predict(run.out_dir / "checkpoint.pt", scene_files, branch=branch, progress=False)
    for got, again, want, image in zip(from_arrays, from_files, expected, scenes[0]):
        assert got.dtype == np.uint8 and got.shape == image.shape[:2]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(again, want)
    assert any(len(np.unique(m)) > 1 for m in expected)  # the comparison is not between blank maps


def test_an_image_larger_than_the_crop_is_covered_by_sliding_windows(run, scenes, monkeypatch):
    big = np.concatenate([np.concatenate(scenes[0], axis=1)] * 2, axis=0)[:100, :150]  # 100 x 150
    seen = []
    load = checkpoint.load_nets

    def load_and_watch(path, device="cpu"):
        cfg, nets = load(path, device)
        nets[0].register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
        return cfg, nets

    monkeypatch.setattr(checkpoint, "load_nets", load_and_watch)
    (got,) = cpcl_kit.predict(run.out_dir, big, crop=64, progress=False)
    stride = math.ceil(64 * run.config.eval_stride)
    assert seen == [(64, 64)] * (len(window_starts(100, 64, stride)) * len(window_starts(150, 64, stride)))
    assert got.shape == (100, 150)
    monkeypatch.undo()
    cfg, nets = checkpoint.load_nets(run.out_dir / "checkpoint.pt")
    mean, std = (torch.tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    x = (torch.from_numpy(big).permute(2, 0, 1).float() / 255 - mean) / std
    want = predict_logits(nets[0], x[None], crop=64, stride_ratio=cfg.eval_stride, num_classes=cfg.num_classes)
    np.testing.assert_array_equal(got, want.argmax(dim=1)[0].numpy())


def test_written_pngs_read_back_as_the_maps_and_overlays_have_the_images_size(run, scene_files, tmp_path):
    predictor = Predictor.load(run.out_dir, branch="ensemble")
    labels = predictor(scene_files, progress=False)
    written = write_predictions(labels, scene_files, tmp_path / "out", palette=predictor.palette)
    assert [(m.name, o.name) for m, o in written] == [(f"scene{i}.png", f"scene{i}_overlay.png") for i in range(3)]
    for (ids, overlay), label, source in zip(written, labels, scene_files):
        with Image.open(ids) as im:
            assert im.mode == "P" and im.getpalette()[:6] == predictor.palette[:2].reshape(-1).tolist()
            np.testing.assert_array_equal(np.array(im), label)
        with Image.open(overlay) as im, Image.open(source) as src:
            assert im.mode == "RGB" and im.size == src.size
            blend = np.round(0.5 * np.array(src) + 0.5 * predictor.palette[label]).astype(np.uint8)
            np.testing.assert_array_equal(np.array(im), blend)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for pair in written for p in pair)
    # a VOC map carries VOC's colours, and the ids stay the pixel values
    (ids, _), = write_predictions([labels[0]], [scene_files[0]], tmp_path / "voc", palette=palette_for("voc", 21))
    with Image.open(ids) as im:
        assert im.getpalette()[3:6] == [128, 0, 0]
        np.testing.assert_array_equal(np.array(im), labels[0])


def test_output_names_refuse_collisions_and_overwriting_the_inputs(scenes, tmp_path):
    a, b = write_image(tmp_path / "a" / "x.png", scenes[0][0]), write_image(tmp_path / "b" / "x.jpg.png", scenes[0][1])
    assert output_names([a, scenes[0][1]]) == ["x", "image1"]
    other = write_image(tmp_path / "b" / "x.png", scenes[0][1])
    with pytest.raises(KitError, match=r"a/x.png and .*b/x.png would both write x.png"):
        output_names([a, other])
    with pytest.raises(KitError, match="would both write x_overlay.png"):
        output_names([a, write_image(tmp_path / "x_overlay.png", scenes[0][0])])
    with pytest.raises(KitError, match="would overwrite an input image"):
        write_predictions([np.zeros((64, 64), np.uint8)], [a], tmp_path / "a", palette=voc_palette())
    assert output_names([b]) == ["x.jpg"]


def test_bad_arguments_are_one_line_kit_errors(run, tmp_path):
    with pytest.raises(KitError, match="branch: expected one of net1, net2, ensemble, got 'net3'"):
        cpcl_kit.predict(run.out_dir, [], branch="net3")
    with pytest.raises(KitError, match=r"images\[0\]: expected an image file path or a uint8 RGB array"):
        cpcl_kit.predict(run.out_dir, [np.zeros((8, 8, 3), np.float32)], progress=False)
    with pytest.raises(KitError, match="images: none given"):
        cpcl_kit.predict(run.out_dir, [], progress=False)
    with pytest.raises(KitError, match="is a folder without checkpoint.pt"):
        cpcl_kit.predict(tmp_path, [np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(KitError, match="device: expected auto, cpu, cuda or cuda:N, got 'gpu'"):
        cpcl_kit.predict(run.out_dir, [np.zeros((8, 8, 3), np.uint8)], device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_maps_agree_with_the_cpus(run, scenes):
    cpu = cpcl_kit.predict(run.out_dir, scenes[0], branch="ensemble", device="cpu", progress=False)
    predictor = Predictor.load(run.out_dir, branch="ensemble", device="cuda")
    gpu = predictor(scenes[0], progress=False)
    assert predictor.device.type == "cuda"
    assert all(p.device.type == "cuda" for net in predictor.models for p in net.parameters())
    for a, b in zip(cpu, gpu):  # TF32 convolutions may flip a near tie, never a map
        assert b.dtype == np.uint8 and b.shape == a.shape and (a == b).mean() > 0.99


def test_a_supervised_run_has_net1_only(tmp_path):
    sup = run_or_load(make_config("smoke", method="supervised", **TINY), tmp_path / "sup", progress=False)
    image = np.zeros((64, 64, 3), np.uint8)
    assert cpcl_kit.predict(sup.out_dir, image, progress=False)[0].shape == (64, 64)
    for branch in ("net2", "ensemble"):
        with pytest.raises(KitError, match=f"branch: {branch} needs a two-net run .* method 'supervised', one net"):
            cpcl_kit.predict(sup.out_dir, image, branch=branch)


def _cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_predicts_files_and_folders(run, scene_files, tmp_path, capsys):
    more = write_image(tmp_path / "more" / "extra.png", np.zeros((40, 50, 3), np.uint8))
    (tmp_path / "more" / "notes.txt").write_text("not an image")
    code, out, err = _cli(["predict", "--checkpoint", str(run.out_dir / "checkpoint.pt"), str(scene_files[0].parent),
                           str(more.parent), "--out", str(tmp_path / "preds"), "--branch", "net2", "--quiet"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "preds").iterdir())
    assert names == sorted(f"{n}{s}.png" for n in ("scene0", "scene1", "scene2", "extra") for s in ("", "_overlay"))
    assert str(tmp_path / "preds") in out and "4 image(s), net2" in out
    with Image.open(tmp_path / "preds" / "extra.png") as im:
        assert im.size == (50, 40)


# argv after `predict` ({w}: the test's folder, {run}: the run folder) and what the one line says
CLI_ERRORS = {
    "missing checkpoint": ("--checkpoint {w}/nope.pt {w}/in", r"checkpoint: file not found: .*nope\.pt"),
    "missing image": ("--checkpoint {run} {w}/in/gone.jpg", r"images: .*gone\.jpg not found"),
    "unreadable image": ("--checkpoint {run} {w}/in/broken.png", r"broken\.png: cannot read image"),
    "no images": ("--checkpoint {run} {w}/empty", r"images: folder .*empty holds no .*\.jpg"),
    "bad branch": ("--checkpoint {run} {w}/in --branch both", r"argument --branch: invalid choice: 'both'"),
    "bad device": ("--checkpoint {run} {w}/in --device gpu", r"device: expected auto, cpu, cuda"),
    # torch builds a "meta" device, on which nothing is computed
    "meta device": ("--checkpoint {run} {w}/in --device meta",
                    r"device: expected auto, cpu, cuda or cuda:N, got 'meta'"),
    # a window under 2 output strides gives layer4 one position: one class everywhere
    "crop below the run's minimum": ("--checkpoint {run} {w}/in --crop 8",
                                     r"crop: expected at least 32 px for the run in .*checkpoint\.pt \(2 x its output "
                                     r"stride 16"),
    "crop past memory": ("--checkpoint {run} {w}/in --crop 1000000000", r"crop: expected at most \d+ px \(one window"),
}


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_mistakes_end_in_one_line_and_exit_2(run, scenes, tmp_path, capsys, case):
    write_image(tmp_path / "in" / "ok.png", scenes[0][0])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty").mkdir()
    args, pattern = CLI_ERRORS[case]
    argv = args.format(w=tmp_path, run=run.out_dir).split()
    code, out, err = _cli(["predict", *argv, "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert not (tmp_path / "out").exists()


def test_cpcl_kit_predict_is_the_engines_function_and_imported_lazily():
    import cpcl_kit.engine.predict

    assert cpcl_kit.predict is cpcl_kit.engine.predict.predict
    probe = "import sys, cpcl_kit; print('cpcl_kit.engine.predict' in sys.modules, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.split() == ["False", "False"], proc.stderr
