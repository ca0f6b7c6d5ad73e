"""Tables that describe a model: stage shapes and parameter counts (pandas DataFrames)."""

from __future__ import annotations

import pandas as pd
import torch

from .deeplab import DeepLabV3Plus


@torch.no_grad()
def stage_table(model: DeepLabV3Plus, x: torch.Tensor) -> pd.DataFrame:
    """One row per stage: output shape and stride relative to the input ``x [B,3,H,W]``."""
    was_training = model.training
    model.eval()
    feats = model.features(x)
    model.train(was_training)
    rows = []
    for name, f in feats.items():
        rows.append({"stage": name, "channels": f.shape[1], "height": f.shape[2], "width": f.shape[3],
                     "stride": round(x.shape[-1] / f.shape[-1], 2)})
    return pd.DataFrame(rows)


def parameter_table(model: DeepLabV3Plus) -> pd.DataFrame:
    """Parameters per part (backbone, ASPP, decoder, classifier), in millions and percent."""
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in model.parts().items()}
    total = sum(counts.values())
    df = pd.DataFrame({"part": list(counts), "parameters": list(counts.values())})
    df["millions"] = (df["parameters"] / 1e6).round(3)
    df["percent"] = (100 * df["parameters"] / total).round(1)
    return df


def taps_on_map(side: int, rate: int, kernel: int = 3) -> float:
    """How many of a ``kernel``×``kernel`` convolution's taps, dilated by ``rate``, read the map rather
    than its zero padding, averaged over every position of a ``side``×``side`` map. Once the rate
    reaches the map's side only the centre tap is left: the convolution is a 1×1 one in disguise."""
    offsets = [rate * (k - kernel // 2) for k in range(kernel)]
    per_row = sum(0 <= i + o < side for i in range(side) for o in offsets) / side
    return per_row ** 2


@torch.no_grad()
def aspp_reach(model: DeepLabV3Plus, image_size: int, paper_size: int | None = None,
               paper_stride: int | None = None) -> pd.DataFrame:
    """One row per ASPP branch: its dilation rate, and how many of its 9 taps read the layer-4 map
    (``taps_on_map``) at ``image_size``, beside the same at the paper's crop and output stride."""
    was_training = model.training
    model.eval()  # one image: train-mode BatchNorm cannot normalise the pooled branch
    side = model.features(torch.zeros(1, 3, image_size, image_size))["layer4"].shape[-1]
    model.train(was_training)
    rates = [m.dilation[0] for m in model.aspp.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    rows = []
    for r in rates:
        row = {"branch": f"3×3, rate {r}", "layer-4 map here": f"{side}×{side}",
               "taps on the map here (of 9)": round(taps_on_map(side, r), 2)}
        if paper_size and paper_stride:
            p = -(-paper_size // paper_stride)
            row.update({"layer-4 map, paper": f"{p}×{p}", "taps on the map, paper (of 9)": round(taps_on_map(p, r), 2)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("branch")
