"""The classroom demo of notebook 08: one CPCL run's pseudo labels, explored with widgets.

``Classroom`` holds the stage snapshots of a shared run and the pseudo labels of a few unlabeled
scenes at each stage (computed once per stage and union rule); ``show`` draws the overlay figure
with sliders for the scene, the training stage and the weight threshold, and a union-rule menu.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from . import analysis, plots
from .constants import UNION_RULES


class Classroom:
    def __init__(self, cfg, run, data, n_scenes: int = 6, seed: int = 0):
        self.cfg, self.data, self.n_scenes, self.seed = cfg, data, n_scenes, seed
        self.nets_at = analysis.stage_nets(run)  # {iteration: the two nets at that point of training}
        self.stages = list(self.nets_at)
        self._labels = {}

    def labels_at(self, stage: int, rule: str):
        """(images, masks, PseudoLabels) of the scenes at stage number ``stage`` under ``rule``."""
        if (stage, rule) not in self._labels:
            self._labels[stage, rule] = analysis.pseudo_labels_on_scenes(
                self.nets_at[self.stages[stage]], self.data, dataclasses.replace(self.cfg, union_rule=rule),
                n=self.n_scenes, seed=self.seed)
        return self._labels[stage, rule]

    def render(self, scene: int = 0, stage: int = -1, threshold: float = 0.0, rule: str | None = None):
        """The 2x4 overlay figure of one scene at one stage; pixels whose weight is below
        ``threshold`` are shown without a label."""
        rule = rule or self.cfg.union_rule
        stage = stage % len(self.stages)
        images, masks, labels = self.labels_at(stage, rule)
        return plots.prediction_overlays(
            images, masks, labels, scene, self.data.class_names, threshold=threshold,
            title=f"iteration {self.stages[stage]} of {self.cfg.iterations} · union rule: {rule} · "
                  f"ω threshold {threshold:.2f}")

    def show(self, interactive: bool = True) -> None:
        """Sliders (scene, stage, ω threshold) and the union-rule menu over the figure; with
        ``interactive=False`` (headless runs) the figure at the controls' start values."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        from IPython.display import display

        def draw(scene, stage, threshold, rule):
            self.render(scene, stage, threshold, rule)
            plt.show()

        last = len(self.stages) - 1
        controls = {
            "scene": widgets.IntSlider(value=0, min=0, max=self.n_scenes - 1, description="scene"),
            "stage": widgets.IntSlider(value=last, min=0, max=last, description="stage"),
            "threshold": widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="ω threshold"),
            "rule": widgets.Dropdown(options=list(UNION_RULES), value=self.cfg.union_rule, description="union rule"),
        }
        if not interactive:
            draw(**{k: w.value for k, w in controls.items()})
            return
        c = controls
        display(widgets.VBox([widgets.HBox([c["scene"], c["stage"]]), widgets.HBox([c["threshold"], c["rule"]])]),
                widgets.interactive_output(draw, controls))

    def quality(self) -> pd.DataFrame:
        """Coverage and accuracy of each label kind at every stage (the run's own union rule)."""
        rows = []
        for k, it in enumerate(self.stages):
            _, masks, labels = self.labels_at(k, self.cfg.union_rule)
            rows.append(analysis.label_quality(labels, masks).assign(iteration=it))
        table = pd.concat(rows)
        return table.pivot(index="label", columns="iteration", values=["coverage (%)", "accuracy (%)"]).round(1)
