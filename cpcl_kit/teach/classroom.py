"""The classroom demo of notebook 08: one CPCL run's pseudo labels, explored with widgets.

``Classroom`` holds the stage snapshots of a shared run and the pseudo labels of a few unlabeled
scenes at each stage (computed once per stage and union rule, by the training step's own function);
``show`` draws the overlay figure with sliders for the scene, the training iteration and the weight
threshold, a union-rule menu, and the labels of one disputed pixel; ``compare`` puts two stages side
by side. Figures use larger fonts (``plots.for_projector``).
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from ..constants import UNION_RULES
from ..method import scenes
from . import analysis, plots

class Classroom:
    def __init__(self, cfg, run, data, n_scenes: int = 6, seed: int = 0):
        self.cfg, self.data, self.n_scenes, self.seed = cfg, data, n_scenes, seed
        self.nets_at = analysis.stage_nets(run)  # {iteration: the two nets at that point of training}
        self.stages = list(self.nets_at)
        self._labels = {}

    def labels_at(self, stage: int, rule: str):
        """(images, masks, PseudoLabels) of the scenes at stage number ``stage`` under ``rule``."""
        stage = stage % len(self.stages)
        if (stage, rule) not in self._labels:
            self._labels[stage, rule] = scenes.pseudo_labels_on_scenes(
                self.nets_at[self.stages[stage]], self.data, dataclasses.replace(self.cfg, union_rule=rule),
                n=self.n_scenes, seed=self.seed)
        return self._labels[stage, rule]

    def pixel(self, scene: int = 0, stage: int = -1, rule: str | None = None) -> dict:
        """One disputed pixel of ``scene`` at ``stage`` and how the union rule settled it (as in
        notebook 04); the same pixel position for every stage when the nets dispute it there."""
        images, masks, labels = self.labels_at(stage, rule or self.cfg.union_rule)
        return analysis.disagreeing_pixel(labels, self.data.class_names, masks, index=scene, seed=self.seed)

    def render(self, scene: int = 0, stage: int = -1, threshold: float = 0.0, rule: str | None = None,
               mark: bool = True):
        """The 2x4 overlay figure of one scene at one stage, one disputed pixel circled; pixels whose
        weight is below ``threshold`` are shown without a label."""
        rule = rule or self.cfg.union_rule
        stage = stage % len(self.stages)
        images, masks, labels = self.labels_at(stage, rule)
        pick = self.pixel(scene, stage, rule) if mark else {}
        return plots.for_projector(plots.prediction_overlays(
            images, masks, labels, scene, self.data.class_names, threshold=threshold,
            mark=(pick["scene"], pick["row"], pick["col"]) if pick else None,
            title=f"iteration {self.stages[stage]} of {self.cfg.iterations} · union rule: {rule} · "
                  f"ω threshold {threshold:.2f}"))

    def compare(self, scene: int = 0, stages: tuple = (0, -1), threshold: float = 0.0, rule: str | None = None):
        """One scene at two (or more) stages, one row each: what training changed."""
        from ..method.cpcl import PseudoLabels

        rule = rule or self.cfg.union_rule
        parts = [self.labels_at(s, rule) for s in stages]
        take = lambda t: t[scene : scene + 1]  # noqa: E731
        fields = {f.name: torch.cat([take(getattr(p[2], f.name)) for p in parts]) if f.name != "indicator"
                  else parts[0][2].indicator for f in dataclasses.fields(PseudoLabels)}
        names = [f"iteration {self.stages[s % len(self.stages)]}" for s in stages]
        return plots.for_projector(plots.prediction_overlays(
            torch.cat([take(p[0]) for p in parts]), torch.cat([take(p[1]) for p in parts]),
            PseudoLabels(**fields), list(range(len(stages))), self.data.class_names, threshold=threshold,
            row_names=names, title=f"Scene {scene}: {' vs '.join(names)}"))

    def show(self, interactive: bool = True) -> None:
        """Sliders (scene, training iteration, ω threshold) and the union-rule menu over the figure and
        the disputed pixel's table; with ``interactive=False`` (headless runs) the figure at the
        controls' start values."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        from IPython.display import display

        def draw(scene, stage, threshold, rule):
            self.render(scene, stage, threshold, rule)
            plt.show()
            pick = self.pixel(scene, stage, rule)
            if pick:
                display(pd.Series(pick, dtype=object).drop(["y1", "y2"], errors="ignore").to_frame("the circled pixel"))

        last = len(self.stages) - 1
        controls = {
            "scene": widgets.IntSlider(value=0, min=0, max=self.n_scenes - 1, description="scene"),
            "stage": widgets.SelectionSlider(options=[(str(it), k) for k, it in enumerate(self.stages)], value=last,
                                             description="iteration"),
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
