"""The training loop: every method runs, learns, resumes exactly, and refuses bad settings."""

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch

from cpcl_kit.config import make_config
from cpcl_kit.data import build_data
from cpcl_kit.engine.train import train, TrainingDiverged
from cpcl_kit.engine.trainer import lr_at, unsup_weight_at
from cpcl_kit.errors import KitError


def _params(nets):
    return [p.detach().clone() for n in nets for p in n.state_dict().values()]


@pytest.mark.parametrize("method", ["supervised", "cps", "cpcl"])
def test_every_method_runs_and_writes_its_outputs(method, tmp_path):
    cfg = make_config("smoke", method=method)
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])  # a denormal float
    assert (tiny * 1.0).item() != 0
    res = train(cfg, out_dir=tmp_path, progress=False)
    assert (tiny * 1.0).item() == 0, "CPU training flushes denormals (they slow a converging run 3x)"
    for name in ("config.json", "history.csv", "metrics.json", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["method"] == method and m["iterations"] == cfg.iterations
    assert 0 <= m["miou"] <= 1 and len(m["per_class_iou"]) == 11 and m["seconds"] > 0
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["iteration"]) == list(range(cfg.log_every, cfg.iterations + 1, cfg.log_every))
    assert len(res.nets) == (1 if method == "supervised" else 2)
    if method == "cpcl":  # pseudo-label statistics appear once the unsupervised loss is on
        late = hist[hist["lambda"] > 0]
        assert late["agreement"].between(0, 1).all() and late["acc_union"].between(0, 1).all()
        ind = late[[f"ind_{c}" for c in range(11)]].sum(axis=1)
        assert ((ind - 1).abs() < 1e-3).all()  # the normalised indicator sums to 1


def test_short_cpcl_run_lowers_loss_and_beats_chance(tmp_path):
    cfg = make_config("smoke", iterations=60, sup_only_iters=20, rampup_iters=10, log_every=10,
                      checkpoint_every=60, n_train_scenes=128, n_val_scenes=24, lr=2e-3)
    data = build_data(cfg)
    res = train(cfg, progress=False, data=data)
    h = res.history
    assert h["sup1"].iloc[-1] < 0.6 * h["sup1"].iloc[0]
    # predicting all background scores background IoU = its pixel share, 0 for the digits
    masks = torch.stack([data.val[i][1] for i in range(len(data.val))])
    floor = (masks == 0).float().mean().item() / 11
    assert res.metrics["miou"] > floor + 0.01, (res.metrics["miou"], floor)
    assert res.metrics["per_class_iou"][0] > 0.7  # background found, not everything background


def test_resumed_run_equals_uninterrupted(tmp_path):
    cfg = make_config("smoke", method="cpcl")
    full = train(cfg, out_dir=tmp_path / "a", progress=False)
    part = train(cfg, out_dir=tmp_path / "b", progress=False, stop_at=6)
    assert part.metrics == {}
    resumed = train(cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    for p, q in zip(_params(full.nets), _params(resumed.nets)):
        assert torch.equal(p, q)
    cols = [c for c in full.history.columns if c != "seconds"]
    pd.testing.assert_frame_equal(full.history[cols], resumed.history[cols])
    assert full.metrics["miou"] == resumed.metrics["miou"]


def test_history_row_after_a_resume_between_logging_points_is_a_mean(tmp_path):
    """Paused at 6 with log_every 4: the row at 8 holds iterations 7-8 only, so it must be their mean
    (the per-iteration losses of the same run logged every iteration), not their sum over 4."""
    cfg = make_config("smoke", method="cpcl", iterations=8, log_every=4)
    every = train(make_config("smoke", method="cpcl", iterations=8, log_every=1), progress=False)
    train(cfg, out_dir=tmp_path, progress=False, stop_at=6)
    resumed = train(cfg, out_dir=tmp_path, resume=True, progress=False)
    per_it = every.history.set_index("iteration")
    row = resumed.history.set_index("iteration").loc[8]
    for k in ("loss", "sup1"):
        assert row[k] == pytest.approx(per_it.loc[[7, 8], k].mean(), rel=1e-5), k


def test_same_seed_same_run_other_seed_differs():
    a = train(make_config("smoke", iterations=6, log_every=2), progress=False)
    b = train(make_config("smoke", iterations=6, log_every=2), progress=False)
    c = train(make_config("smoke", iterations=6, log_every=2, seed=1), progress=False)
    cols = [x for x in a.history.columns if x != "seconds"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])
    assert not a.history["loss"].equals(c.history["loss"])


def test_nan_loss_stops_with_the_iteration_and_keeps_last_checkpoint(tmp_path):
    cfg = make_config("smoke", method="supervised", optimizer="sgd", lr=1e12, warmup_iters=0,
                      iterations=12, log_every=1, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"iteration \d+"):
        train(cfg, out_dir=tmp_path, progress=False)
    info = json.loads((tmp_path / "diverged.json").read_text())
    assert info["last_good_iteration"] < info["iteration"]
    assert not (tmp_path / "metrics.json").exists()
    from cpcl_kit.engine.checkpoint import load

    state = load(tmp_path / "checkpoint.pt")
    assert state["iteration"] == info["last_good_iteration"]
    assert all(torch.isfinite(t).all() for sd in state["nets"] for t in sd.values() if t.is_floating_point())


def test_schedules():
    cfg = make_config("smoke", lr=0.1, warmup_iters=4, iterations=100, sup_only_iters=10,
                      rampup_iters=10, unsup_weight=2.0)
    assert lr_at(0, cfg) == pytest.approx(0.025) and lr_at(3, cfg) == pytest.approx(0.1)
    assert lr_at(50, cfg) == pytest.approx(0.1 * 0.5 ** 0.9)
    assert unsup_weight_at(9, cfg) == 0 and unsup_weight_at(10, cfg) == pytest.approx(0.2)
    assert unsup_weight_at(19, cfg) == pytest.approx(2.0) and unsup_weight_at(99, cfg) == 2.0
    paper = make_config("voc")
    assert lr_at(0, paper) == paper.lr == 0.005 and unsup_weight_at(0, paper) == 1.0


def test_ablation_switches_change_the_targets():
    base = dict(iterations=6, log_every=6, sup_only_iters=0, rampup_iters=0)
    runs = {name: train(make_config("smoke", **base, **kw), progress=False).history
            for name, kw in {"full": {}, "inter": {"targets": ("inter", "inter")},
                             "noweight": {"reweight": False}, "void": {"pseudo_void_band": 1},
                             "nomix": {"cutmix_boxes": 0}, "affine": {"student_aug": "affine"}}.items()}
    assert runs["full"]["unsup2"].iloc[-1] != runs["inter"]["unsup2"].iloc[-1]
    assert runs["full"]["unsup1"].iloc[-1] != runs["noweight"]["unsup1"].iloc[-1]
    assert runs["full"]["unsup1"].iloc[-1] != runs["void"]["unsup1"].iloc[-1]
    assert runs["full"]["unsup1"].iloc[-1] != runs["nomix"]["unsup1"].iloc[-1]
    assert runs["full"]["unsup1"].iloc[-1] != runs["affine"]["unsup1"].iloc[-1]
    # the statistics describe the teachers' labels, before the void band
    assert runs["void"]["agreement"].iloc[-1] > 0
    assert runs["noweight"]["w_union"].iloc[-1] == 1.0


def test_resume_refuses_another_run(tmp_path):
    train(make_config("smoke", iterations=6, log_every=2, checkpoint_every=2), out_dir=tmp_path, progress=False)
    with pytest.raises(KitError, match=r"other settings \(seed: folder 0, now 3\)"):
        train(make_config("smoke", iterations=6, log_every=2, checkpoint_every=2, seed=3),
              out_dir=tmp_path, resume=True, progress=False)


def test_bf16_autocast_runs_on_cpu_and_keeps_losses_fp32():
    import torch as _t

    from cpcl_kit.engine.device import amp_dtype

    assert amp_dtype(_t.device("cpu"), "auto") is None and amp_dtype(_t.device("cpu"), "bf16") == _t.bfloat16
    with pytest.raises(KitError, match="fp16"):
        amp_dtype(_t.device("cpu"), "fp16")
    res = train(make_config("smoke", iterations=6, log_every=2, sup_only_iters=2, rampup_iters=0,
                            amp="bf16", device="cpu"), progress=False)
    assert res.history["loss"].map(math.isfinite).all()
    assert res.history["agreement"].dropna().between(0, 1).all()


def test_two_net_runs_evaluate_net1_net2_and_the_ensemble():
    res = train(make_config("smoke", iterations=4, log_every=2, n_train_scenes=32, n_val_scenes=4,
                            backbone_weights="none"), progress=False)
    b = res.metrics["branches"]
    assert set(b) == {"1", "2", "ensemble"} and res.metrics["miou"] == b["1"]["miou"]
    assert all(0 <= b[k]["miou"] <= 1 and len(b[k]["per_class_iou"]) == 11 for k in b)
    sup = train(make_config("smoke", method="supervised", iterations=2, log_every=2, n_train_scenes=32,
                            n_val_scenes=4, backbone_weights="none"), progress=False)
    assert "branches" not in sup.metrics


def test_teachers_in_eval_mode_use_running_statistics():
    """teacher_bn="eval": each teacher's logits are its eval-mode predictions of u0 and u1 (whatever
    they are batched with), mixed; the nets end in train mode and their BN statistics are untouched.
    "train" (official) gives other logits: batch statistics of u0 and of u1 separately."""
    from cpcl_kit.data.loaders import Batch
    from cpcl_kit.method.cpcl import cutmix_box_masks, mix
    from cpcl_kit.method.variants import teachers
    from cpcl_kit.nets.deeplab import build_nets

    torch.manual_seed(0)
    nets = build_nets(make_config("smoke", backbone_weights="none"))
    x = torch.randn(4, 3, 32, 32)
    for net in nets:  # running statistics that differ from any batch's
        net.train()(x * 3 + 1)
    u0, u1 = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    batch, mask = Batch(x, None, u0, None, u1, None), cutmix_box_masks(3, (32, 32), generator=torch.Generator().manual_seed(1))
    before = [n.state_dict()["backbone.bn1.running_mean"].clone() for n in nets]
    got = teachers(nets, batch, mask, "eval")
    assert all(n.training for n in nets)
    assert all(torch.equal(b, n.state_dict()["backbone.bn1.running_mean"]) for b, n in zip(before, nets))
    with torch.no_grad():
        for net, t in zip(nets, got):
            net.eval()
            one_by_one = torch.cat([net(u0[i : i + 1]) for i in range(3)]), torch.cat([net(u1[i : i + 1]) for i in range(3)])
            net.train()
            assert torch.allclose(t, mix(*one_by_one, mask), atol=1e-4)
    official = teachers(nets, batch, mask, "train")
    with torch.no_grad():
        assert torch.allclose(official[0], mix(nets[0](u0), nets[0](u1), mask))
    assert not torch.allclose(official[0], got[0], atol=1e-2)
    with pytest.raises(KitError, match="teacher_bn: unknown value 'frozen', expected one of train, eval"):
        make_config("smoke", teacher_bn="frozen")


def test_pseudo_void_band_takes_the_teachers_outlines_out_of_the_targets():
    """pseudo_void_band=1: the step's void is every pixel within 1 px of either teacher's outlines
    (an independent construction from the labels); 0, the official recipe, voids nothing."""
    from types import SimpleNamespace

    import numpy as np

    from cpcl_kit.data.outlines import boundary_band
    from cpcl_kit.method.steps import pseudo_labels

    g = torch.Generator().manual_seed(0)
    t1, t2 = (torch.randn(2, 4, 6, 6, generator=g).repeat_interleave(2, -1).repeat_interleave(2, -2) for _ in "12")

    class Teacher(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits

    batch = SimpleNamespace(u0=torch.zeros(2, 3, 12, 12), u0_mask=None, u1=None, u1_mask=None)
    cfg = make_config("smoke", pseudo_void_band=1, cutmix_boxes=0, student_aug="none", teacher_bn="train")
    p = pseudo_labels([Teacher(t1), Teacher(t2)], batch, cfg, torch.Generator().manual_seed(0))
    void = (boundary_band(p.labels.y1, 1) | boundary_band(p.labels.y2, 1)).numpy()
    assert 0 < void.mean() < 1 and np.array_equal(p.void.numpy(), void)
    official = pseudo_labels([Teacher(t1), Teacher(t2)], batch, dataclasses.replace(cfg, pseudo_void_band=0),
                             torch.Generator().manual_seed(0))
    assert official.void is None and torch.equal(official.labels.union, p.labels.union)
    with pytest.raises(KitError, match="pseudo_void_band: expected 0 .none. or a band width in px, got -1"):
        make_config("smoke", pseudo_void_band=-1)
    with pytest.raises(KitError, match=r"cutmix_boxes: expected 0 \(no mixing\) or a number of boxes, got -1"):
        make_config("smoke", cutmix_boxes=-1)


def test_cutmix_boxes_zero_shows_the_student_u0():
    from types import SimpleNamespace

    from cpcl_kit.method.variants import cutmix, teachers
    from cpcl_kit.nets.deeplab import build_nets

    truth = torch.randint(0, 3, (2, 8, 8))
    batch = SimpleNamespace(u0=torch.randn(2, 3, 8, 8), u1=None, u0_mask=truth, u1_mask=None)
    mask, u_mix, got = cutmix(batch, torch.Generator().manual_seed(0), 0)
    assert mask is None and u_mix is batch.u0 and got is truth  # no u1 needed
    batch.u1, batch.u1_mask = torch.randn(2, 3, 8, 8), truth.flip(0)
    mask, u_mix, _ = cutmix(batch, torch.Generator().manual_seed(0), 3)  # the official boxes
    assert 0 < mask.mean() < 1 and torch.equal(u_mix, torch.where(mask.bool(), batch.u1, batch.u0))
    # Without a mask the teachers predict u0 alone, in either BatchNorm mode, as the nets do by themselves.
    torch.manual_seed(0)
    nets = build_nets(make_config("smoke", backbone_weights="none"))
    batch.u1 = None
    for bn in ("train", "eval"):
        got = teachers(nets, batch, None, bn)
        with torch.no_grad():
            for net, t in zip(nets, got):
                want = net.train(bn == "train")(batch.u0)
                net.train()
                assert torch.allclose(t, want, atol=1e-5)


@pytest.mark.parametrize("method", ["cps", "cpcl"])
def test_nets_on_two_threads_are_bit_for_bit_one_thread(method):
    """net_threads: each net's passes, backward and update on its own thread give exactly the
    weights, BatchNorm statistics, optimizer state and history of the nets taken in turn."""
    cfg = make_config("smoke", method=method, iterations=5, sup_only_iters=2, rampup_iters=2, log_every=1,
                      checkpoint_every=5, n_val_scenes=8)
    threads = train(cfg, progress=False)
    turns = train(dataclasses.replace(cfg, net_threads=False), progress=False)
    for a, b in zip(threads.nets, turns.nets):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    cols = [c for c in threads.history.columns if c != "seconds"]
    assert threads.history["unsup1"].notna().any()
    pd.testing.assert_frame_equal(threads.history[cols], turns.history[cols])
    assert threads.metrics["miou"] == turns.metrics["miou"]


def test_the_cpu_trainer_puts_two_nets_on_threads():
    from cpcl_kit.engine.trainer import on_threads, Trainer
    from cpcl_kit.method.steps import each

    cpu = torch.device("cpu")
    assert Trainer.create(make_config("smoke", method="cpcl"), cpu).par is on_threads
    assert Trainer.create(make_config("smoke", method="cpcl", net_threads=False), cpu).par is each
    assert Trainer.create(make_config("smoke", method="supervised"), cpu).par is each
