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
