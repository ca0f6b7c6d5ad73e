"""The classroom demo of notebook 08: one CPCL run's pseudo labels, explored with widgets.

``Classroom`` holds the stage snapshots of a shared run and the pseudo labels of a few unlabeled
scenes at each stage (computed once per stage and union rule, by the training step's own function);
``show`` draws the overlay figure with sliders for the scene, the training iteration and the weight
threshold, a union-rule menu, and the labels of one disputed pixel; ``compare`` puts two stages side
by side; ``quality`` and ``coverage_sentence`` give each stage's label coverage and accuracy. Figures
use larger fonts (``plots.for_projector``).
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from ..constants import IGNORE_INDEX, UNION_RULES
from ..method import scenes
from . import analysis, plots

# The threshold control's settings: the share of the shown union labels to grey, lowest weights first.
# A fixed ω grid cannot do this on a trained run, where most weights sit within a hundredth of 1.
GREY_SHARES = tuple(k / 10 for k in range(10))

INTERSECTION, UNION = "intersection (net 1's target)", "union (net 2's target)"


def teaching_stages(iterations, sup_only_iters: int) -> list[int]:
    """The stages the classroom shows out of a run's snapshot iterations: of those whose nets were
    trained by the labeled loss alone (iteration <= ``sup_only_iters``), only the last, the nets
    whose pseudo labels the first unsupervised step uses; then every later one. Two such stages would
    spend the slider on pseudo labels that no training step used."""
    its = sorted(set(int(it) for it in iterations))
    before = [it for it in its if it <= sup_only_iters]
    return before[-1:] + [it for it in its if it > sup_only_iters]


def grey_threshold(weights: torch.Tensor, share: float) -> tuple[float, float]:
    """(threshold, greyed share): the ω threshold that greys (ω < threshold) the lowest ``share`` of
    ``weights``, and the share it actually greys. Equal weights grey together, so where a tie straddles
    the share it greys less than asked, never more; 0 greys nothing."""
    w = weights.detach().float().reshape(-1).sort().values
    n, k = len(w), round(share * len(w))
    if n == 0 or k <= 0:
        return 0.0, 0.0
    # The k-th lowest weight greys every weight below it; both stay float32, the weights' own type,
    # so the overlay's ω < threshold counts exactly what is counted here.
    t = w[k] if k < n else torch.nextafter(w[-1], torch.tensor(float("inf")))
    return float(t), int((w < t).sum()) / n


def weight_text(w: float) -> str:
    """ω with two digits after its leading nines (0.87, 0.99949), at most seven decimals: enough to
    tell thresholds near 1 apart."""
    text = f"{w:.7f}"
    nines = len(text[2:]) - len(text[2:].lstrip("9")) if text.startswith("0.") else 0
    return f"{w:.{min(7, max(2, nines + 2))}f}"


def greyed(labels, threshold: float):
    """``labels`` with the intersection and union labels whose weight is below ``threshold`` removed
    (shown grey), as ``prediction_overlays(threshold=...)`` does. Done here so the figure's title can
    name the threshold with the decimals it needs: the overlay's panel titles round it to two, and
    a threshold of 0.9995 would read 1.00 there."""
    if threshold <= 0:
        return labels
    return dataclasses.replace(labels, inter=labels.inter.masked_fill(labels.w_inter < threshold, IGNORE_INDEX),
                               union=labels.union.masked_fill(labels.w_union < threshold, IGNORE_INDEX))


class Classroom:
    def __init__(self, cfg, run, data, n_scenes: int = 6, seed: int = 0):
        self.cfg, self.data, self.n_scenes, self.seed = cfg, data, n_scenes, seed
        found = analysis.stage_nets(run)  # {iteration: the two nets at that point of training}
        self.stages = teaching_stages(found, cfg.sup_only_iters)
        self.nets_at = {it: found[it] for it in self.stages}
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

    def grey_threshold(self, scene: int = 0, stage: int = -1, share: float = 0.0,
                       rule: str | None = None) -> tuple[float, float]:
        """(threshold, greyed share) that greys the lowest ``share`` of ``scene``'s union labels at
        ``stage`` (``grey_threshold`` on the weights of the labelled union pixels)."""
        labels = self.labels_at(stage, rule or self.cfg.union_rule)[2]
        w = labels.w_union[scene]
        return grey_threshold(w[labels.union[scene] != IGNORE_INDEX], share)

    def render(self, scene: int = 0, stage: int = -1, threshold: float = 0.0, rule: str | None = None,
               mark: bool = True, grey: float | None = None):
        """The 2x4 overlay figure of one scene at one stage, one disputed pixel ringed; pixels whose
        weight is below ``threshold`` are shown without a label. ``grey`` (a share, 0-1) sets the
        threshold instead: the one that greys that share of the scene's union labels, lowest weights
        first; the title gives the threshold and the share it greys."""
        rule = rule or self.cfg.union_rule
        stage = stage % len(self.stages)
        images, masks, labels = self.labels_at(stage, rule)
        pick = self.pixel(scene, stage, rule) if mark else {}
        if grey is not None:
            threshold, share = self.grey_threshold(scene, stage, grey, rule)
            what = (f" · ω < {weight_text(threshold)} greyed ({100 * share:.0f} % of the union)"
                    if threshold > 0 else "")
        else:
            what = f" · ω threshold {weight_text(threshold)}" if threshold > 0 else ""
        return plots.for_projector(plots.prediction_overlays(
            images, masks, greyed(labels, threshold), scene, self.data.class_names,
            mark=(pick["scene"], pick["row"], pick["col"]) if pick else None,
            title=f"iteration {self.stages[stage]} of {self.cfg.iterations} · union rule: {rule}{what}"))

    def compare(self, scene: int = 0, stages: tuple = (0, -1), threshold: float = 0.0, rule: str | None = None):
        """One scene at two (or more) stages, one row each: what training changed."""
        from ..method.cpcl import PseudoLabels

        rule = rule or self.cfg.union_rule
        parts = [self.labels_at(s, rule) for s in stages]
        take = lambda t: t[scene : scene + 1]  # noqa: E731
        fields = {f.name: torch.cat([take(getattr(p[2], f.name)) for p in parts]) if f.name != "indicator"
                  else parts[0][2].indicator for f in dataclasses.fields(PseudoLabels)}
        names = [f"iteration {self.stages[s % len(self.stages)]}" for s in stages]
        title = f"Scene {scene}: {' vs '.join(names)}"
        return plots.for_projector(plots.prediction_overlays(
            torch.cat([take(p[0]) for p in parts]), torch.cat([take(p[1]) for p in parts]),
            greyed(PseudoLabels(**fields), threshold), list(range(len(stages))), self.data.class_names,
            row_names=names,
            title=title + (f" · ω threshold {weight_text(threshold)}" if threshold > 0 else "")))

    def show(self, interactive: bool = True) -> None:
        """Sliders (scene, training iteration, ω threshold) and the union-rule menu over the figure and
        the disputed pixel's table; with ``interactive=False`` (headless runs) the figure at the
        controls' start values. The threshold slider picks the share of the shown union labels to
        grey, lowest weights first (``GREY_SHARES``); the figure's title gives the ω that greys it."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        from IPython.display import display

        def draw(scene, stage, grey, rule):
            self.render(scene, stage, rule=rule, grey=grey)
            plt.show()
            pick = self.pixel(scene, stage, rule)
            if pick:
                display(pd.Series(pick, dtype=object).drop(["y1", "y2"], errors="ignore").to_frame("the ringed pixel"))

        last = len(self.stages) - 1
        wide = {"description_width": "initial"}
        controls = {
            "scene": widgets.IntSlider(value=0, min=0, max=self.n_scenes - 1, description="scene"),
            "stage": widgets.SelectionSlider(options=[(str(it), k) for k, it in enumerate(self.stages)], value=last,
                                             description="iteration"),
            "grey": widgets.SelectionSlider(options=[(f"greys {100 * s:.0f} %" if s else "off", s)
                                                     for s in GREY_SHARES],
                                            value=0.0, description="ω threshold", style=wide),
            "rule": widgets.Dropdown(options=list(UNION_RULES), value=self.cfg.union_rule, description="union rule"),
        }
        if not interactive:
            draw(**{k: w.value for k, w in controls.items()})
            return
        c = controls
        display(widgets.VBox([widgets.HBox([c["scene"], c["stage"]]), widgets.HBox([c["grey"], c["rule"]])]),
                widgets.interactive_output(draw, controls))

    def quality(self) -> pd.DataFrame:
        """Coverage and accuracy of each label kind at every stage (the run's own union rule):
        ``analysis.label_quality`` of the shown scenes."""
        rows = []
        for k, it in enumerate(self.stages):
            _, masks, labels = self.labels_at(k, self.cfg.union_rule)
            rows.append(analysis.label_quality(labels, masks).assign(iteration=it))
        table = pd.concat(rows)
        return table.pivot(index="label", columns="iteration", values=["coverage (%)", "accuracy (%)"]).round(1)

    def coverage_sentence(self, table: pd.DataFrame | None = None) -> str:
        """The intersection's and the union's coverage and accuracy at the first and the last stage,
        in words, from ``quality()`` (or ``table``, one of its results): what question 1 asks about,
        read from this run."""
        q = self.quality() if table is None else table
        first, last = self.stages[0], self.stages[-1]
        cov = lambda kind, it: f"{q.loc[kind, ('coverage (%)', it)]:.1f} %"  # noqa: E731
        acc = lambda kind, it: f"{q.loc[kind, ('accuracy (%)', it)]:.1f} %"  # noqa: E731
        which = "the only stage" if first == last else "the first stage"
        inter = (f"At iteration {first} ({which}) the intersection labels {cov(INTERSECTION, first)} of the "
                 f"pixels of the {self.n_scenes} scenes, {acc(INTERSECTION, first)} of them right")
        union = f"The union labels {cov(UNION, first)} at iteration {first}, {acc(UNION, first)} right"
        if first != last:
            inter += (f"; at iteration {last} (the last) it labels {cov(INTERSECTION, last)}, "
                      f"{acc(INTERSECTION, last)} right")
            union += f", and {cov(UNION, last)} at iteration {last}, {acc(UNION, last)} right"
        return f"{inter}.\n{union}."
