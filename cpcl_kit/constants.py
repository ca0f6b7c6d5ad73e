"""Names and numbers every module shares, defined once.

This module imports nothing from the kit, so anything may import it.
"""

import os
import sys
from pathlib import Path

# The committed benchmark results (benchmarks/*.py write them; notebooks and tables read them). They
# come with the kit's git checkout, not with an installed package (see results_here).
RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def results_here(folder) -> bool:
    """Whether ``folder`` (of committed results) exists. When it is ``RESULTS_DIR`` and missing (an
    installed package), one line on stderr says where the committed results are; the reader then
    answers as for a result not measured (None), never a crash."""
    if Path(folder).is_dir():
        return True
    if Path(folder) == RESULTS_DIR:
        print(f"cpcl-kit: no committed benchmark results here ({RESULTS_DIR}); they come with the kit's "
              f"git checkout (benchmarks/results/), not with an installed package", file=sys.stderr, flush=True)
    return False

# The environment variable that moves the kit's cache (cache_root) elsewhere.
CACHE_ENV = "CPCL_KIT_CACHE"


def cache_root() -> Path:
    """Where the kit keeps what it makes once (pretrained digit backbones, the prepared run set,
    benchmark run folders): ``$CPCL_KIT_CACHE``, else ``$XDG_CACHE_HOME/cpcl-kit``, else
    ``~/.cache/cpcl-kit``; read at each call, so a process may point it elsewhere (the tests do)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cpcl-kit"

# The ResNets the kit builds (nets/deeplab.py): torchvision's, the official deep-stem v1c ones, and
# ResNet-18 at a quarter and half of its width (the CPU presets).
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50_v1c", "resnet101_v1c",
             "resnet18_w16", "resnet18_w32")
# Output strides the DeepLabv3+ head supports (ASPP rates 6/12/18 at 16, 12/24/36 at 8).
OUTPUT_STRIDES = (16, 8)

# Label value of pixels without a label: VOC's object borders, unlabeled images, CutMix truth
# where unknown. Losses and metrics skip it.
IGNORE_INDEX = 255

# What `predict` can run of a run: net 1 (the branch the paper reports), net 2, or both (mean softmax).
PREDICT_BRANCHES = ("net1", "net2", "ensemble")
# A folder data set (--dataset folder): images/, masks/<same stem>.png, this file of class names
# (one per line, its line number the class id), optional val/images + val/masks.
FOLDER_CLASSES = "classes.txt"
# torchvision's ImageNet weight files, under the names its hub cache keeps them (never downloaded:
# imagenet_file says where a user puts them).
IMAGENET_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
                  "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}
# How the union label is chosen where the nets disagree (docs/method.md §3): by the class-wise
# disagreement indicator (the paper) or by the more confident net (an ablation).
UNION_RULES = ("disagreement", "confidence")
# Which pseudo label each net of a CPCL run learns from, (net 1, net 2): the paper's pair and the
# two single-kind ablations.
TARGET_PAIRS = (("inter", "union"), ("inter", "inter"), ("union", "union"))
# How layer 4 (and layer 3 at output stride 8) of the ResNet is dilated: the official code's rates
# (2, 4, 8 at OS16) or torchvision's convention (nets.deeplab.official_block_dilations).
DILATIONS = ("official", "torchvision")
# Where a crop smaller than the crop size sits in its padding: centred (the official loader) or random.
CROP_PADS = ("centre", "random")
PAPER_PRESETS = ("voc", "cityscapes")
# Where the digit backbone pretraining (pretrain.py) takes its images from.
PRETRAIN_SOURCES = ("handwritten", "printed", "mixed")
# The confidence behind CPCL's loss weights: each pixel's (the official code as it is) or one
# number per teacher and batch (its first release).
WEIGHT_SCOPES = ("pixel", "batch")
# BatchNorm in the teachers' no-grad passes on the unlabeled images: batch statistics (train mode, the
# official code) or the running statistics (eval mode: with a CPU preset's 4-image batches, batch
# statistics make the teachers markedly worse than the same nets evaluated).
TEACHER_BN = ("train", "eval")
# What the student of a two-net method sees: the mixed image (official) or it warped by a random
# affine that keeps the digit whole (perturb.py; not in the recipe).
STUDENT_AUGS = ("none", "affine")
# What the intersection loss is averaged over: all pixels (official) or the labeled ones (first release).
LOSS_NORMALISERS = ("all", "labeled")
# labeled="all": every training scene labeled (the "full" supervised reference of ssl_gain)
ALL_LABELED = "all"


def imagenet_file(backbone: str) -> Path | None:
    """Where torchvision's cache keeps the ImageNet weights of ``backbone`` (the file may be absent),
    or None when torchvision has none for it (the v1c and narrowed ResNets)."""
    if backbone not in IMAGENET_FILES:
        return None
    import torch.hub  # here, not at import: the bottom layer stays light

    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[backbone]
