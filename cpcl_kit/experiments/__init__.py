"""Experiments over many runs: ablation grids, the prepared run set, published numbers, seed noise."""
