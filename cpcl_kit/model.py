"""DeepLabv3+ over a torchvision ResNet, laid out as in the official CPCL code (method notes §1.2).

Backbone stages: stem (stride 4), layer1 (4), layer2 (8), layer3 (16 at OS16), layer4 (16 or 8).
Head: ASPP (1x1 + three dilated 3x3, concatenated, BN, LeakyReLU, 1x1) plus an image-pooling branch
that is *added*, then a decoder that joins a 48-channel projection of layer1, two 3x3 convs and a
1x1 classifier. Logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from .errors import KitError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
_IMAGENET_WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": models.ResNet101_Weights.IMAGENET1K_V1,
}


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


def _build_resnet(name: str, output_stride: int) -> nn.Module:
    if name not in BACKBONES:
        raise KitError(f"backbone: unknown '{name}', expected one of {', '.join(BACKBONES)}")
    if output_stride not in (8, 16):
        raise KitError(f"output_stride: expected 8 or 16, got {output_stride}")
    dilate = [False, output_stride == 8, True]  # for layer2, layer3, layer4
    if name in ("resnet50", "resnet101"):
        return getattr(models, name)(weights=None, replace_stride_with_dilation=dilate)
    net = getattr(models, name)(weights=None)
    d = 1
    for layer, flag in zip((net.layer2, net.layer3, net.layer4), dilate):
        if flag:
            _dilate_basic_layer(layer, d * 2, d)
            d *= 2
    return net


def _imagenet_state_dict(name: str) -> dict:
    """torchvision's ImageNet weights from its local cache. Never downloads: the kit reads weights
    only from local files, so a machine without the file gets one clear error saying where to put it."""
    weights = _IMAGENET_WEIGHTS[name]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file():
        raise KitError(
            f"backbone_weights='imagenet': {name} ImageNet weights are not in torchvision's cache "
            f"({cached}); the kit downloads nothing: copy that file there (from {weights.url}) or "
            f"pass the path of a torchvision state dict file as backbone_weights")
    return torch.load(cached, map_location="cpu", weights_only=True)


def load_backbone_weights(backbone: nn.Module, source: str | os.PathLike, name: str) -> None:
    """Load a torchvision-format ResNet state dict into ``backbone``, strictly.

    ``fc.*`` keys are the one allowed extra (the classifier we do not use).
    """
    if str(source) == "imagenet":
        state = _imagenet_state_dict(name)
    else:
        path = Path(source)
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
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KitError(f"backbone_weights: {source} does not hold a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KitError(
            f"backbone_weights: {source} does not match a torchvision {name}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
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
        y = self.merge(torch.cat([b(x) for b in self.branches], dim=1))
        # Image pooling is added, not concatenated (official layout); broadcasting repeats it.
        y = y + self.pool(x.mean(dim=(2, 3), keepdim=True))
        return self.out(y)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ segmentation network.

    Args:
        num_classes: output channels C.
        backbone: one of ``BACKBONES`` (torchvision ResNet, random init unless weights given).
        output_stride: 16 (ASPP rates 6/12/18) or 8 (12/24/36).
        backbone_weights: None, a path to a torchvision ResNet state dict, or ``"imagenet"``.
        head_channels: ASPP and decoder width (256 in the paper).

    ``forward(x [B,3,H,W]) -> logits [B,C,H,W]`` for any H, W.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", output_stride: int = 16,
                 backbone_weights: str | os.PathLike | None = None, head_channels: int = 256):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise KitError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
        if not isinstance(head_channels, int) or head_channels < 1:
            raise KitError(f"head_channels: expected a positive integer, got {head_channels!r}")
        net = _build_resnet(backbone, output_stride)
        del net.fc, net.avgpool  # a segmentation net has no use for them
        if backbone_weights is not None:
            load_backbone_weights(net, backbone_weights, backbone)
        self.backbone = net
        self.backbone_name, self.output_stride, self.num_classes = backbone, output_stride, num_classes
        low_ch = net.layer1[-1].conv1.in_channels  # 64 (BasicBlock) or 256 (Bottleneck)
        high_ch = 512 if backbone in ("resnet18", "resnet34") else 2048
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        ch = head_channels
        self.aspp = ASPP(high_ch, ch, rates)
        self.low_proj = _conv_bn(low_ch, 48, 1, nn.ReLU())
        self.decoder = nn.Sequential(_conv_bn(ch + 48, ch, 3, nn.ReLU()), _conv_bn(ch, ch, 3, nn.ReLU()))
        self.classifier = nn.Conv2d(ch, num_classes, 1)
        self._init_head()

    def _init_head(self) -> None:
        for part in (self.aspp, self.low_proj, self.decoder, self.classifier):
            for m in part.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

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
    n = 1 if cfg.method == "supervised" else 2
    nets = [DeepLabV3Plus(cfg.num_classes, cfg.backbone, cfg.output_stride, cfg.backbone_weights,
                          cfg.head_channels) for _ in range(n)]
    for other in nets[1:]:
        other.backbone.load_state_dict(nets[0].backbone.state_dict())
    return nets
