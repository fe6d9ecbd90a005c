"""Box plots of per-case DSC or NSD (%): one row of panels per (setting, test set), one panel per structure,
one box per method with its cases as dots, and the published nnU-Net means as dashed lines."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from covlight.benchmark import STRUCTURES
from covlight.report.collect import Run, setting_label
from covlight.report.tables import METRICS, STRUCTURE_LABELS, benchmark_order, dataset_label, published

BASELINE_STYLE = {"2D": "--", "3D": ":"}  # line styles, in black: the methods' boxes use the tab10 colours


def per_case_values(runs: list[Run], metric: str) -> dict[tuple, dict[str, dict[str, list[float]]]]:
    """(setting, dataset) -> structure -> method name -> non-NaN per-case values in %, in benchmark order."""
    values: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for run in sorted(runs, key=lambda run: benchmark_order(run.method, None, "")):
        for case in run.cases:
            for structure, spec in STRUCTURES.items():
                value = case.get(spec.column(metric), math.nan)
                per_method = values[(run.setting, case["dataset"])][structure].setdefault(run.name, [])
                if not math.isnan(value):
                    per_method.append(100 * value)
    ordered = sorted(values.items(), key=lambda item: benchmark_order((*item[0][0], ""), None, item[0][1]))
    return {panel: {structure: {name: v for name, v in by_name.items() if v}
                    for structure, by_name in structures.items() if any(by_name.values())}
            for panel, structures in ordered}


def draw_boxplots(runs: list[Run], metric: str, path: Path) -> None:
    """Write the PNG of `metric` ("dsc" or "nsd") for every (setting, test set) and structure.

    Drawn on a bare `Figure` (matplotlib's Agg renderer), so no pyplot state or GUI backend is involved."""
    panels = {panel: structures for panel, structures in per_case_values(runs, metric).items() if structures}
    names = sorted({run.name for run in runs})
    colours = {name: matplotlib.colormaps["tab10"](i % 10) for i, name in enumerate(names)}
    columns = max((len(structures) for structures in panels.values()), default=1)
    rows = max(len(panels), 1)
    figure = Figure(figsize=(4.4 * columns, 3.8 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for row, ((setting, dataset), structures) in enumerate(panels.items()):
        for column, (structure, by_name) in enumerate(structures.items()):
            ax = axes[row][column]
            _panel(ax, by_name, colours)
            for dims, style in BASELINE_STYLE.items():
                mean, _ = published(dims, setting, dataset, structure, metric)
                if mean is not None:
                    ax.axhline(mean, color="black", linestyle=style, linewidth=1.2,
                               label=f"nnU-Net {dims} (published mean)")
            title = f"{setting_label(setting)} — {dataset_label(dataset, setting[0])}\n{STRUCTURE_LABELS[structure]}"
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(f"{METRICS[metric]} (%)")
        for column in range(len(structures), columns):
            axes[row][column].axis("off")
    if not panels:
        axes[0][0].text(0.5, 0.5, f"no per-case {METRICS[metric]} values", ha="center", va="center")
        axes[0][0].axis("off")
    figure.suptitle(f"Per-case {METRICS[metric]} by method and structure", fontsize=11)
    legend = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels(),
                                                                         strict=True)}
    if legend:
        figure.legend(legend.values(), legend.keys(), loc="upper right", fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)


def _panel(ax, by_name: dict[str, list[float]], colours: dict) -> None:
    """One box per method, its cases as jittered dots, the case count under its name."""
    names = sorted(by_name)
    data = [by_name[name] for name in names]
    boxes = ax.boxplot(data, widths=0.55, patch_artist=True, showfliers=False, medianprops={"color": "black"})
    for box, name in zip(boxes["boxes"], names, strict=True):
        box.set_facecolor((*colours[name][:3], 0.35))
    jitter = np.random.default_rng(0)
    for position, (name, values) in enumerate(zip(names, data, strict=True), start=1):
        offsets = jitter.uniform(-0.12, 0.12, len(values))
        ax.scatter(position + offsets, values, s=9, color=colours[name], zorder=3)
    ax.set_xticks(range(1, len(names) + 1), [f"{name}\n(n={len(values)})" for name, values in zip(names, data,
                                                                                                   strict=True)],
                  fontsize=8)
    ax.set_ylim(-3, 103)
    ax.grid(axis="y", alpha=0.3)
