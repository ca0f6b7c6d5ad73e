"""DeepLabv3+ over a ResNet, laid out as in the official CPCL code (docs/method.md §1).

Backbones: torchvision's ResNet-18/34/50/101 (7x7 stem), and ``resnet50_v1c`` / ``resnet101_v1c``,
the deep-stem ResNet of CPS/TorchSemiSeg's furnace that the official code trains from
(``resnet50_v1c.pth``; three 3x3 stem convs 3->64->64->128, layer1 fed 128 channels).
Stages: stem (stride 4), layer1 (4), layer2 (8), layer3 (16 at OS16), layer4 (16 or 8).
Head: ASPP (1x1 + three dilated 3x3, concatenated, BN, LeakyReLU, 1x1) plus an image-pooling branch
that is *added*, then a decoder that joins a 48-channel projection of layer1, two 3x3 convs and a
1x1 classifier. Logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from .. import registry
from ..config import DILATIONS
from ..constants import imagenet_file
from ..errors import KitError

TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
V1C_BACKBONES = ("resnet50_v1c", "resnet101_v1c")
# ResNet-18's layout (two BasicBlocks per stage, torchvision's key names) at a fraction of its width:
# stages of w, 2w, 4w, 8w channels instead of 64..512. For the CPU presets: the digit scenes' 8x8
# source digits need far fewer channels, and at 64 px a step costs about the square of the width.
NARROW_BACKBONES = {"resnet18_w16": 16, "resnet18_w32": 32}
BACKBONES = TORCHVISION_BACKBONES + V1C_BACKBONES + tuple(NARROW_BACKBONES)
_IMAGENET_WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": models.ResNet101_Weights.IMAGENET1K_V1,
}
# The text that asks for random initialisation on purpose (config: backbone_weights=none).
RANDOM_INIT = "none"


def _dilate_basic_layer(layer: nn.Sequential, dilation: int, previous: int) -> None:
    """Turn a stride-2 layer of BasicBlocks into a stride-1 dilated one, in place.

    torchvision only dilates Bottlenecks; we follow its convention: the first 3x3 conv of the
    layer keeps the previous dilation, every later 3x3 conv uses the new one.
    """
    for i, block in enumerate(layer):
        for j, conv in enumerate((block.conv1, block.conv2)):
            d = previous if (i == 0 and j == 0) else dilation
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def official_block_dilations(output_stride: int, blocks: tuple[int, int]) -> dict[str, list[int]]:
    """Dilation of every block's 3x3 convs under the official rule, {layer: [rate per block]}.

    ``blocks``: the number of blocks of (layer3, layer4). OS16 is the official code
    (exp_voc/network.py ``_nostride_dilate``): layer4's blocks get 2, 4, 8 (a counter starting at 2
    that doubles per block). The official code has no OS8; the kit extends the same rule one stage
    earlier, as DeepLabv3's multi-grid does: layer3's blocks all get 2 and layer4's counter starts
    at 4 (4, 8, 16), so layer4 sees twice layer3's rate as it does at OS16.
    """
    n3, n4 = blocks
    if output_stride == 16:
        return {"layer4": [2 * 2 ** j for j in range(n4)]}
    return {"layer3": [2] * n3, "layer4": [4 * 2 ** j for j in range(n4)]}


def _nostride_dilate(layer: nn.Sequential, rates: list[int]) -> None:
    """The official ``_nostride_dilate`` on every block of ``layer``, in place: each conv of block j
    loses its stride (the strided 3x3 and the 1x1 shortcut alike) and each 3x3 conv of block j gets
    dilation = padding = rates[j], the strided one included (unlike torchvision's convention)."""
    for block, d in zip(layer, rates, strict=True):
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation, m.padding = (d, d), (d, d)


def _deep_stem(net: models.ResNet) -> None:
    """Turn a torchvision Bottleneck ResNet into furnace's deep-stem "v1c" layout, in place.

    The module names are those of the CPS/TorchSemiSeg files: conv1.{0,3,6} three bias-free 3x3
    convs 3->64 (stride 2) ->64->128 with BN conv1.{1,4} and ReLU conv1.{2,5} between them, then
    bn1 (128), ReLU and the 3x3/2 max-pool. layer1 then takes 128 channels, so its first block's
    1x1 conv and 1x1 projection shortcut read 128 instead of 64. Everything after is unchanged
    (torchvision's Bottleneck already strides its 3x3 conv, as furnace's does).
    """
    def conv3x3(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    net.conv1 = nn.Sequential(conv3x3(3, 64, 2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                              conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                              conv3x3(64, 128))
    net.bn1 = nn.BatchNorm2d(128)
    first = net.layer1[0]
    first.conv1 = nn.Conv2d(128, first.conv1.out_channels, 1, bias=False)
    first.downsample[0] = nn.Conv2d(128, first.downsample[0].out_channels, 1, bias=False)
    # the init torchvision gives every other conv, so a random-init v1c is drawn like the rest
    for conv in (*net.conv1[0::3], first.conv1, first.downsample[0]):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


class _NarrowResNet(models.ResNet):
    """torchvision's ResNet-18 with stages of ``width``, 2, 4 and 8 x ``width`` channels (its
    construction and init, its module names: a state dict of one loads as torchvision's would)."""

    def __init__(self, width: int, num_classes: int = 1000):
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(models.resnet.BasicBlock, width, 2)
        self.layer2 = self._make_layer(models.resnet.BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(models.resnet.BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(models.resnet.BasicBlock, 8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        _kaiming_init(self, "fan_out")  # as torchvision initialises its ResNets


def _kaiming_init(module: nn.Module, mode: str) -> None:
    """He-normal convs (``mode`` "fan_in" or "fan_out") and unit BatchNorms, in module order."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet(name: str, num_classes: int = 1000) -> models.ResNet:
    """The classification ResNet ``name`` (torchvision layout, random init from torch's global RNG,
    stride 32, ``fc`` to ``num_classes``); the v1c names get torchvision's 7x7-stem Bottleneck net,
    which ``_build_resnet`` then gives the deep stem."""
    if name not in BACKBONES:
        raise KitError(f"backbone: unknown '{name}', expected one of {', '.join(BACKBONES)}")
    if name in NARROW_BACKBONES:
        return _NarrowResNet(NARROW_BACKBONES[name], num_classes)
    return getattr(models, name.removesuffix("_v1c"))(weights=None, num_classes=num_classes)


def _build_resnet(name: str, output_stride: int, dilation: str = "torchvision") -> nn.Module:
    """An ImageNet-layout ResNet (random init, fc kept) whose layer4 (and layer3 at OS8) run
    dilated: ``dilation="torchvision"`` (torchvision's replace_stride_with_dilation convention)
    or ``"official"`` (the official CPCL rule, ``official_block_dilations``)."""
    if name not in BACKBONES:
        raise KitError(f"backbone: unknown '{name}', expected one of {', '.join(BACKBONES)}")
    if output_stride not in (8, 16):
        raise KitError(f"output_stride: expected 8 or 16, got {output_stride}")
    if dilation not in DILATIONS:
        raise KitError(f"dilation: unknown '{dilation}', expected one of {', '.join(DILATIONS)}")
    base = name.removesuffix("_v1c")
    bottleneck = base in ("resnet50", "resnet101")
    dilate = [False, output_stride == 8, True]  # for layer2, layer3, layer4
    if dilation == "torchvision" and bottleneck:
        # exactly the pre-"dilation" construction, so saved runs and CPU presets are unchanged
        net = getattr(models, base)(weights=None, replace_stride_with_dilation=dilate)
    else:
        net = resnet(name)
        if dilation == "torchvision":
            d = 1
            for layer, flag in zip((net.layer2, net.layer3, net.layer4), dilate):
                if flag:
                    _dilate_basic_layer(layer, d * 2, d)
                    d *= 2
        else:
            rates = official_block_dilations(output_stride, (len(net.layer3), len(net.layer4)))
            for layer_name, layer_rates in rates.items():
                _nostride_dilate(getattr(net, layer_name), layer_rates)
    if name in V1C_BACKBONES:
        _deep_stem(net)
    return net


def imagenet_state_dict(name: str) -> dict:
    """torchvision's ImageNet weights from its local cache. Never downloads: the kit reads weights
    only from local files, so a machine without the file gets one clear error saying where to put it."""
    if name in NARROW_BACKBONES:
        raise KitError(f"backbone_weights='imagenet': no ImageNet weights exist for {name} (a narrowed "
                       f"ResNet-18); on the digit scenes use backbone_weights=digits, else a file or none")
    if name not in _IMAGENET_WEIGHTS:
        raise KitError(
            f"backbone_weights='imagenet': torchvision has no {name} weights; pass the path of the "
            f"CPS/TorchSemiSeg file {name}.pth (DATA/pytorch-weight/ of github.com/charlesCXK/TorchSemiSeg)")
    weights = _IMAGENET_WEIGHTS[name]
    cached = imagenet_file(name)
    if not cached.is_file():
        raise KitError(
            f"backbone_weights='imagenet': {name} ImageNet weights are not in torchvision's cache "
            f"({cached}); the kit downloads nothing: copy that file there (from {weights.url}) or "
            f"pass the path of a torchvision state dict file as backbone_weights")
    return torch.load(cached, map_location="cpu", weights_only=True)


def _read_state_dict(path: Path) -> dict:
    """A state dict from a file: the raw dict, or the one under ``"model"`` (furnace's wrapper)."""
    if not path.is_file():
        raise KitError(f"backbone_weights: file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = (f"it holds pickled Python objects ({found.group(1)}), refused by weights_only loading"
               if found else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}")
        raise KitError(f"backbone_weights: {path} is not a loadable PyTorch state dict ({why})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state


def _layout_hint(name: str, state: dict) -> str:
    """A pointer to the other backbone family when the file's stem says it belongs there."""
    if name in V1C_BACKBONES and "conv1.weight" in state:
        return f" (the file has a 7x7 conv1.weight: a torchvision ResNet; use backbone={name.removesuffix('_v1c')})"
    if name not in V1C_BACKBONES and "conv1.0.weight" in state:
        return f" (the file has a deep stem conv1.0..conv1.6: a v1c ResNet; use backbone={name}_v1c)"
    return ""


def load_backbone_weights(backbone: nn.Module, source: str | os.PathLike, name: str) -> None:
    """Load a ResNet state dict into ``backbone``, strictly, by the backbone's own key layout.

    torchvision names for the torchvision ResNets; furnace's (``conv1.0.weight``, ``conv1.1.*``,
    ..., ``bn1.*``, ``layer1.0.conv1.weight``) for the v1c ones; a file may hold the dict itself or
    ``{"model": dict}``. ``fc.*`` keys are the one allowed extra (the classifier we do not use);
    BatchNorm ``num_batches_tracked`` counters may be absent (files converted from Gluon have none;
    they are counters, not weights, and are unused with a fixed BN momentum). Any other missing or
    unexpected key is an error: never a silently random backbone.
    """
    if str(source) == "digits":  # resolved above the model: pretraining trains a model
        raise KitError("backbone_weights='digits' names the kit's pretrained digit backbone: build the nets "
                       "with train.nets_for(cfg), which pretrains it on first use, or pass its file")
    if str(source) == "imagenet":
        state = imagenet_state_dict(name)
    else:
        state = _read_state_dict(Path(source))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KitError(f"backbone_weights: {source} does not hold a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        family = f"CPS/TorchSemiSeg {name}" if name in V1C_BACKBONES else f"torchvision {name}"
        raise KitError(
            f"backbone_weights: {source} does not match a {family}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
            f"{_layout_hint(name, state)}"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise KitError(f"backbone_weights: {source}: wrong tensor shapes for {bad[:8]}")
    backbone.load_state_dict(state, strict=True)


def _conv_bn(cin: int, cout: int, k: int, act: nn.Module, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout), act
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, [B, cin, h, w] -> [B, ch, h, w]."""

    # Run the branches as one 1x1 convolution where every rate reaches past the map (``forward``);
    # False computes the four convolutions as written (``benchmarks/speed.py`` times both ways).
    fold_small_maps: bool = True

    def __init__(self, cin: int, ch: int, rates: tuple[int, int, int]):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Conv2d(cin, ch, 1, bias=False)]
            + [nn.Conv2d(cin, ch, 3, padding=r, dilation=r, bias=False) for r in rates]
        )
        self.merge = nn.Sequential(
            nn.BatchNorm2d(4 * ch), nn.LeakyReLU(), nn.Conv2d(4 * ch, ch, 1, bias=False)
        )
        self.pool = nn.Sequential(
            nn.Conv2d(cin, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.LeakyReLU(),
            nn.Conv2d(ch, ch, 1, bias=False),
        )
        self.out = nn.Sequential(nn.BatchNorm2d(ch), nn.LeakyReLU())

    def forward(self, x):
        h, w = x.shape[-2:]
        if self.fold_small_maps and all(min(b.dilation) >= max(h, w) for b in self.branches[1:]):
            # Every dilated branch reaches past the map on all sides, so its 8 outer taps read only
            # zero padding: the four branches are one 1x1 convolution with the 3x3s' centre taps (a
            # small map's case, e.g. the CPU presets' 4x4). Same function, same gradients (the outer
            # taps get zero either way), in a seventh of the multiply-adds and one convolution.
            weight = torch.cat([self.branches[0].weight] + [b.weight[:, :, 1:2, 1:2] for b in self.branches[1:]])
            y = self.merge(F.conv2d(x, weight))
        else:
            y = self.merge(torch.cat([b(x) for b in self.branches], dim=1))
        # Image pooling is added, not concatenated (official layout); broadcasting repeats it.
        y = y + self.pool(x.mean(dim=(2, 3), keepdim=True))
        return self.out(y)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ segmentation network.

    Args:
        num_classes: output channels C.
        backbone: one of ``BACKBONES`` (random init unless weights given).
        output_stride: 16 (ASPP rates 6/12/18) or 8 (12/24/36).
        backbone_weights: None or ``"none"`` (random init), a path to a state dict in the
            backbone's own layout (torchvision, or CPS/TorchSemiSeg for ``*_v1c``), or
            ``"imagenet"`` (torchvision's cached file; torchvision backbones only).
        head_channels: ASPP and decoder width (256 in the paper).
        dilation: how layer4 (and layer3 at OS8) are dilated: ``"torchvision"`` (the default, the
            kit's behaviour before this option) or ``"official"`` (CPCL's rule: 2, 4, 8 at OS16).

    ``forward(x [B,3,H,W]) -> logits [B,C,H,W]`` for any H, W.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", output_stride: int = 16,
                 backbone_weights: str | os.PathLike | None = None, head_channels: int = 256,
                 dilation: str = "torchvision"):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise KitError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
        if not isinstance(head_channels, int) or head_channels < 1:
            raise KitError(f"head_channels: expected a positive integer, got {head_channels!r}")
        net = _build_resnet(backbone, output_stride, dilation)
        high_ch = net.fc.in_features  # layer4's channels: 512 (ResNet-18/34), 2048 (50/101), 8 x width
        del net.fc, net.avgpool  # a segmentation net has no use for them
        if backbone_weights is not None and str(backbone_weights) != RANDOM_INIT:
            load_backbone_weights(net, backbone_weights, backbone)
        self.backbone = net
        self.backbone_name, self.output_stride, self.num_classes = backbone, output_stride, num_classes
        self.dilation = dilation
        low_ch = net.layer1[-1].conv1.in_channels  # 64 (BasicBlock) or 256 (Bottleneck)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        ch = head_channels
        self.aspp = ASPP(high_ch, ch, rates)
        self.low_proj = _conv_bn(low_ch, 48, 1, nn.ReLU())
        self.decoder = nn.Sequential(_conv_bn(ch + 48, ch, 3, nn.ReLU()), _conv_bn(ch, ch, 3, nn.ReLU()))
        self.classifier = nn.Conv2d(ch, num_classes, 1)
        self._init_head()

    @classmethod
    def from_config(cls, cfg) -> "DeepLabV3Plus":
        """The net a ``config.Config`` describes (backbone, output stride, dilation, weights, head)."""
        return cls(cfg.num_classes, cfg.backbone, cfg.output_stride, cfg.backbone_weights,
                   cfg.head_channels, dilation=cfg.dilation)

    def _init_head(self) -> None:
        for part in (self.aspp, self.low_proj, self.decoder, self.classifier):
            _kaiming_init(part, "fan_in")

    def parts(self) -> dict[str, nn.Module]:
        """The model's parts by name, for parameter tables and per-part learning rates."""
        return {"backbone": self.backbone, "aspp": self.aspp,
                "decoder": nn.ModuleList([self.low_proj, self.decoder]), "classifier": self.classifier}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, in order, ending with ``logits`` at the input's size."""
        b = self.backbone
        f = {}
        f["stem"] = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        f["layer1"] = b.layer1(f["stem"])
        f["layer2"] = b.layer2(f["layer1"])
        f["layer3"] = b.layer3(f["layer2"])
        f["layer4"] = b.layer4(f["layer3"])
        f["aspp"] = self.aspp(f["layer4"])
        low = self.low_proj(f["layer1"])
        up = F.interpolate(f["aspp"], size=low.shape[-2:], mode="bilinear", align_corners=True)
        f["decoder"] = self.decoder(torch.cat([up, low], dim=1))
        f["classifier"] = self.classifier(f["decoder"])
        f["logits"] = F.interpolate(f["classifier"], size=x.shape[-2:], mode="bilinear",
                                    align_corners=True)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


def build_nets(cfg) -> list[DeepLabV3Plus]:
    """One net (supervised) or two (cps, cpcl) for ``cfg`` (a ``config.Config``), identical
    backbones, different heads.

    As in the official code, both branches start from the same backbone weights (the pretrained file,
    or net 1's random draw copied) and their heads are consecutive random draws from one seeded stream.
    """
    torch.manual_seed(cfg.seed)
    n = registry.method(cfg.method).nets
    nets = [DeepLabV3Plus.from_config(cfg) for _ in range(n)]
    for other in nets[1:]:
        other.backbone.load_state_dict(nets[0].backbone.state_dict())
    return nets


def without_sync_bn(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose SyncBatchNorm layers are BatchNorm2d with the same parameters,
    statistics and mode. One process may run it alone: a SyncBatchNorm forward in train mode waits
    for every process of the group (figures on rank 0 would hang the others)."""
    out = copy.deepcopy(net)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.SyncBatchNorm):
                bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
                bn.load_state_dict(child.state_dict())
                setattr(module, name, bn.to(next(child.buffers(), torch.empty(0)).device).train(child.training))
            else:
                swap(child)

    swap(out)
    return out
