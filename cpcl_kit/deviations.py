"""How a run departs from the paper's recipe, in words: what each run writes into its config.json.

The CPU presets deviate from the paper where that is needed to learn at all on two cores
(``DEVIATIONS``); the paper presets follow the official code, and what still differs is listed in
``PAPER_DEVIATIONS``. ``deviations(cfg)`` gives the list that applies to one run.
"""

from __future__ import annotations

from . import registry
from .config import Config, plain, preset_value
from .constants import PAPER_PRESETS

# Deviations of the CPU presets from the paper recipe, shown in notebooks and written into runs:
# `deviations(cfg)` keeps the entries whose setting differs from the paper preset's value, so each
# text only has to be true where that setting deviates.
DEVIATIONS = {
    "backbone": "ResNet-18 at a quarter of its width (resnet18_w16: 16 to 128 channels, 0.7 M parameters; "
                "a CPCL step costs about a fifth of ResNet-18's at 64 px) pretrained on handwritten digits "
                "that no scene uses (backbone_weights='digits': 400 classification steps, the file shipped "
                "in cpcl_kit/weights/ so that every machine starts from the same weights; "
                "python -m cpcl_kit pretrain --rebuild trains it again) instead of ResNet-50 ImageNet, "
                "which is not available offline; backbone_weights=none gives random init",
    "output_stride": "output stride 8 instead of 16: an 8x8 layer4 map on a 64x64 scene instead of 4x4, "
                     "at about 1.6x the cost per step",
    "dilation": "torchvision's dilation convention (the first 3x3 conv of a dilated layer keeps the "
                "previous rate) instead of the official 2, 4, 8 in layer4",
    "head_channels": "thinner ASPP/decoder (64, smoke 32, instead of 256): a 256-channel head would cost "
                     "several times the narrow backbone at 64x64",
    "batch_size": "4 labeled images per step instead of 8 (smoke: seconds)",
    "unlabeled_batch_size": "4 unlabeled images per stream instead of 8: the unsupervised step is "
                            "the cost of a two-net run on a CPU",
    "optimizer": "Adam lr 1e-3 with linear warm-up instead of SGD lr 0.005: kept from the presets that "
                 "trained from random init, where a short SGD prototype did no better",
    "sup_only_iters": "a supervised-only start (a quarter in demo and benchmark, a third in smoke), "
                      "then a linear ramp of lambda (rampup_iters): the teachers' pseudo labels are "
                      "mostly wrong on the digits until the nets have learnt from the labeled scenes",
    "colour_aug": "label-preserving colour augmentation (channel permutation, inversion)",
    "flip": "no flips: a mirrored digit is not a digit",
    "scales": "scale jitter {0.75, 1.0, 1.25} instead of {0.5..2.0} on 64x64 scenes",
    "cutmix_boxes": "no CutMix on the unlabeled scenes (cutmix_boxes=0 instead of 3 boxes): a scene's one "
                    "digit is named by its whole shape and the boxes hand the student fragments of it; "
                    "chosen on tuning seeds 100 and 101 (benchmarks/README.md's history), though the no_cutmix "
                    "rows of an older grid on the reported seeds 0-2 (another recipe and backbone: "
                    "benchmarks/results/ablation-benchmark-c.md) were committed before the change",
    "student_aug": "the student sees the unlabeled scene rotated, scaled and shifted (student_aug=affine, "
                   "perturb.py; the teachers' logits are warped alike) instead of only CutMix, which is "
                   "off here: a perturbation that keeps the digit whole (not in the paper; chosen on "
                   "tuning seeds 100 and 101, though an older grid's affine_no_cutmix rows on the reported "
                   "seeds 0-2 were committed before the change)",
    "teacher_bn": "the teachers predict the unlabeled scenes with BatchNorm's running statistics "
                  "(teacher_bn=eval) instead of those of their own 4-scene batch, which are too noisy "
                  "for good pseudo labels (chosen on tuning seeds 100 and 101, though an older grid's "
                  "teacher_eval rows on the reported seeds 0-2, benchmarks/results/ablation-benchmark.md, "
                  "were committed before the change)",
    "crop_pad": "a scene scaled below the crop size is padded at a random position (torchvision "
                "RandomCrop), not centred as in the official loader: kept so the CPU presets' numbers "
                "stay those already published",
}

# What the paper presets still do differently from the official code (leofansq/CPCL exp_voc/ and
# exp_city/ config.py, train.py, dataloader.py, network.py; furnace/). Everything not named here
# is the official recipe: deep-stem ResNet-50 v1c backbone with layer4 dilated 2, 4, 8 (OS16),
# DeepLabv3+ head (ASPP 6/12/18 + added image pooling, LeakyReLU, 48-ch low-level, two 3x3 256
# convs, classifier with bias, Kaiming fan_in head init), plain BatchNorm in train mode throughout,
# two SGD optimizers (momentum 0.9, weight decay 1e-4 on conv/linear weights only, one lr for
# backbone and head), poly 0.9 per iteration without warm-up, batch 8+8+8 / 16+16+16, crop 512 /
# 800, flip + scales {0.5..2.0} + crop with centred padding (image 0, label 255), CutMix boxes
# (3 XOR boxes, area U(0.25, 0.5)), CE / OHEM CE (0.7, 50,000 px per image, class weights),
# lambda 1 / 5 from iteration 0, branch-1 sliding-window evaluation (crop 512 / 800, stride 2/3,
# single scale, no flip).
PAPER_DEVIATIONS = {
    "iterations": "a fixed total: the VOC 1/16 (39,680) and Cityscapes 1/8 (22,194) counts; the "
                  "official total is nepochs x iterations per epoch of each partition (VOC 1/16, 1/8, "
                  "1/4, 1/2: 39,680, 39,338, 39,680, 39,660; Cityscapes: 22,272, 22,194, 22,240, "
                  "22,320): pass --set iterations=... for another partition",
    "data_order": "each of the three streams walks seeded per-epoch permutations of its own list and "
                  "batches run across epoch ends (exactly resumable); the official loaders resample "
                  "every epoch to max(#labeled, #unlabeled) names (the shorter list repeated plus a "
                  "random top-up, a longer one cut to its first names), shuffle, drop the last "
                  "partial batch and restart all three loaders together",
    "split_files": "with the CPS layout (subset_train_aug/) or --labeled-list the official split lists "
                   "are used; a standard VOCdevkit/Cityscapes tree without lists gets the kit's own "
                   "seeded 1/N partition instead",
    "crop_offset": "random crop offsets are uniform over [0, L - crop]; the official draws "
                   "randint(0, L - crop + 1), inclusive, so its crop can come out one pixel short "
                   "and be padded",
    "resampling": "images are decoded with PIL and rescaled with torchvision (bilinear without "
                  "antialias, masks nearest); the official uses OpenCV (imread, INTER_LINEAR, "
                  "INTER_NEAREST): pixel values can differ by rounding",
    "amp": "amp=auto trains with bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is "
           "missing), losses in fp32; the official code trains in fp32: --set amp=off for that",
    "seed": "seed 0 and every augmentation and CutMix mask drawn from torch generators seeded by "
            "(seed, iteration); the official seeds torch with 12345 and leaves python's and numpy's "
            "RNGs (augmentation, CutMix boxes) unseeded: no run replays the official random draws",
    "multi_gpu": "under torchrun batch sizes are per GPU (N GPUs train N x batch_size images per "
                 "iteration: divide batch_size by N for the official batch); BatchNorm normalises over "
                 "the global batch (sync_bn, on in the paper presets), as the official code does on its "
                 "one GPU; the CutMix boxes and warps are those of one process training the global "
                 "batch",
    "checkpoint_selection": "the run evaluates its last iteration; the official code saves snapshots "
                            "every second epoch after nepochs // 6 plus the last, and does not say "
                            "which one the paper reports",
    "eval_padding": "evaluation pads normalised images with 0 (the mean colour) in both branches; "
                    "the official pads a sliding-window image whose short side is below the crop "
                    "with black before normalising (this never happens on VOC val, at most "
                    "500 px, or Cityscapes val, 1024x2048)",
}

# The CPS baseline (method="cps") in the paper presets runs with CPCL's recipe above, so that CPS
# and CPCL differ only in their pseudo-supervision. The CPS repository's own configs use instead
# (charlesCXK/TorchSemiSeg, the CutMix experiments, 1/8 partition as shipped):
CPS_OWN_RECIPE = {
    "voc": {
        "source": "exp.voc/voc8.res50v3+.CPS+CutMix/config.py, script.sh, train.py, dataloader.py",
        "lr": "0.01: script.sh sets learning_rate=0.0025 on NGPUS=4 and train.py multiplies it by "
              "the world size (config.py alone: 0.005)",
        "batch": "8 labeled + 8 + 8 unlabeled in all, 2 + 2 + 2 per GPU (script.sh batch_size=8, "
                 "divided by the world size in dataloader.py; config.py alone: 16)",
        "iterations": "34 epochs x 1,157 (9,260 // 8) = 39,338 at 1/8",
        "unsup_weight": "cps_weight 1 (1.5 in exp.voc/voc8.res50v3+.CPS, without CutMix)",
        "crop": "512",
        "sup_loss": "CE",
        "batch_norm": "apex SyncBatchNorm over the 4 GPUs",
        "evaluation": "snapshots of epochs 20-34 evaluated (script.sh: eval.py -e 20-34), crop 512, "
                      "stride 2/3, single scale",
    },
    "cityscapes": {
        "source": "exp.city/city8.res50v3+.CPS+CutMix/config.py, script.sh, train.py, dataloader.py",
        "lr": "0.02 (script.sh learning_rate=0.02, not scaled by the world size; config.py alone: 0.04)",
        "batch": "8 + 8 + 8 in all, 1 + 1 + 1 per GPU on NGPUS=8 (config.py alone: 16)",
        "iterations": "137 epochs x 325 (2,604 // 8) = 44,525 at 1/8",
        "unsup_weight": "cps_weight 5 (6 in exp.city/city8.res50v3+.CPS, without CutMix)",
        "crop": "800",
        "sup_loss": "OHEM CE, thresh 0.7, min_kept 50,000 per GPU (50000 * batch // world size), "
                    "no class weights (use_weight=False)",
        "batch_norm": "apex SyncBatchNorm over the 8 GPUs",
        "evaluation": "snapshots of epochs 110-137 evaluated (script.sh), crop 800, stride 2/3, "
                      "single scale",
    },
}


# Settings that make up the recipe: a paper-preset run that changes one is told so in deviations().
RECIPE_FIELDS = ("backbone", "output_stride", "dilation", "head_channels", "crop", "crop_pad", "scales",
                  "flip", "colour_aug", "batch_size", "unlabeled_batch_size", "optimizer", "lr",
                  "momentum", "weight_decay", "warmup_iters", "poly_power", "unsup_weight",
                  "sup_only_iters", "rampup_iters", "union_rule", "reweight", "weight_scope", "inter_norm",
                  "targets", "teacher_bn", "pseudo_void_band", "cutmix_boxes", "student_aug", "sup_loss", "eval_crop", "eval_stride", "eval_branch", "sync_bn")


def deviations(cfg: Config) -> dict[str, str]:
    """How this run differs from the official recipe, ``{setting: why}``, for its config.json.

    CPU presets: the ``DEVIATIONS`` entries whose setting differs from the paper preset's value
    (Cityscapes' for dataset=cityscapes, else VOC's). Paper presets: every ``PAPER_DEVIATIONS``
    entry, plus random initialisation on purpose, the recipe the CPS or supervised baseline follows,
    and each recipe setting changed from the preset.
    """
    if cfg.preset not in PAPER_PRESETS:
        paper = registry.dataset(cfg.dataset).paper_preset
        out = {k: v for k, v in DEVIATIONS.items() if plain(getattr(cfg, k)) != plain(preset_value(paper, k))}
        if not registry.dataset(cfg.dataset).generated:  # real data: the reasons were found on the digit scenes
            out = {k: f"the {cfg.preset} preset's setting, chosen on the digit scenes ({v})" for k, v in out.items()}
            if cfg.backbone != preset_value(cfg.preset, "backbone"):
                out["backbone"] = (f"{cfg.backbone} instead of the preset's digit backbone, which has no "
                                   f"weights for real images")
            if cfg.backbone_weights in ("none", None):
                out["backbone_weights"] = ("random initialisation (asked for, or no ImageNet weights were in "
                                           "torchvision's cache); the paper fine-tunes a pretrained backbone")
            elif cfg.backbone_weights == "imagenet":
                out["backbone_weights"] = "torchvision's ImageNet weights, not the official v1c backbone"
        return out
    out = dict(PAPER_DEVIATIONS)
    if cfg.backbone_weights == "none":
        out["backbone_weights"] = ("random initialisation on purpose (backbone_weights=none) instead of "
                                   "the pretrained backbone the paper fine-tunes")
    note = registry.method(cfg.method).paper_note
    if note is not None and note(cfg):
        out["method"] = note(cfg)
    for key in RECIPE_FIELDS:
        official = preset_value(cfg.preset, key)
        if plain(getattr(cfg, key)) != plain(official):
            out[key] = f"changed to {getattr(cfg, key)!r}; the preset (official recipe) uses {official!r}"
    return out
