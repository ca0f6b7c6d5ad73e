"""Figures for the notebooks. Every function returns a matplotlib Figure, readable when projected."""

from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

sns.set_theme(context="notebook", style="whitegrid")


def save(fig, out_dir, name: str):
    """Save ``fig`` as ``out_dir/figures/name.png`` (the demo collects these)."""
    from pathlib import Path

    path = Path(out_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def parameter_bars(table: pd.DataFrame, title: str = "Parameters per part"):
    """Bar chart of a ``summary.parameter_table``."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.barplot(data=table, x="part", y="millions", hue="part", ax=ax, legend=False)
    for i, row in table.iterrows():
        ax.text(i, row["millions"], f"{row['millions']:.2f} M\n{row['percent']:.0f} %", ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="parameters (millions)", xlabel="", title=title)
    ax.set_ylim(0, table["millions"].max() * 1.3)
    fig.tight_layout()
    return fig


def feature_maps(image: torch.Tensor, feats: dict[str, torch.Tensor], stages=("layer1", "layer2", "layer3", "layer4", "aspp", "decoder")):
    """The input image and the channel-mean activation of each stage (one row)."""
    n = len(stages) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
    img = image.detach().float().cpu()
    if img.min() < 0:  # normalised: undo roughly for display
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    axes[0].imshow(img.permute(1, 2, 0).numpy())
    axes[0].set_title("input")
    for ax, name in zip(axes[1:], stages):
        f = feats[name][0].detach().float().abs().mean(0).cpu().numpy()
        ax.imshow(f, cmap="magma")
        ax.set_title(f"{name}\n{feats[name].shape[1]} ch, {f.shape[0]}x{f.shape[1]}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig
