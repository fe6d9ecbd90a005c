"""Whole-case scoring at test time: DSC and NSD per case on the prediction's device, one row per case.

Rows of all ranks are gathered before anything is averaged or written, so under DDP every case counts once.
`metrics.csv` is written whole (temporary name, then rename) and only by rank 0.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist

from covlight.data.canonical import save_nifti
from covlight.metrics import STRUCTURES, score_case

METRICS_FILE = "metrics.csv"


def metric_columns(structures) -> list[str]:
    """The evaluator's columns for the given structures, in the benchmark's order."""
    columns = []
    for name, structure in STRUCTURES.items():
        if name in structures:
            columns += [structure.dsc_column, structure.nsd_column]
    return columns


def summarise(rows: list[dict], columns: list[str]) -> dict[str, dict[str, float]]:
    """Per test set and column: mean and std over cases ignoring NaN, and how many were NaN."""
    summary: dict[str, dict[str, float]] = {}
    for dataset in sorted({row["dataset"] for row in rows}):
        values = {c: [row[c] for row in rows if row["dataset"] == dataset] for c in columns}
        for column, column_values in values.items():
            finite = [v for v in column_values if not math.isnan(v)]
            summary.setdefault(dataset, {})[column] = {
                "mean": float(np.mean(finite)) if finite else math.nan,
                "std": float(np.std(finite)) if finite else math.nan,
                "n": len(finite),
                "nan": len(column_values) - len(finite),
            }
    return summary


def write_rows_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write the per-case CSV under a temporary name and rename it when whole."""
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Name", "dataset", *columns], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


class CaseScoring(pl.Callback):
    """Score each test case against its ground truth on the original grid; write `metrics.csv`; log means."""

    def __init__(self, output_dir: str, structures, label_values, save_predictions: bool = True):
        self.output_dir = Path(output_dir)
        self.structures = list(structures)
        self.label_values = list(label_values)
        self.save_predictions = save_predictions
        self.rows: list[dict] = []
        self.summary: dict = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []
        path = self.output_dir / METRICS_FILE
        if path.exists():
            raise FileExistsError(f"{path} exists: a finished test is never overwritten; start a new run.")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        prediction = outputs["prediction"]
        label_file = nib.load(batch["label_path"])
        truth = torch.from_numpy(np.asarray(label_file.dataobj, dtype=np.uint8)).to(prediction.device)
        if tuple(truth.shape) != tuple(prediction.shape):
            raise RuntimeError(
                f"{batch['label_path']}: shape {tuple(truth.shape)} differs from the prediction's "
                f"{tuple(prediction.shape)}; the case's geometry changed since the dataset was imported."
            )
        spacing = tuple(float(s) for s in label_file.header.get_zooms()[:3])
        structures = [s for s in self.structures if s in batch["annotated"]]
        row = {"Name": batch["case_id"], "dataset": batch["dataset"]}
        row.update({c: math.nan for c in metric_columns(self.structures)})
        row.update(score_case(prediction, truth, spacing, structures=structures))
        self.rows.append(row)
        if self.save_predictions:
            image_affine = nib.load(batch["image_path"]).affine
            target = self.output_dir / "predictions" / batch["dataset"] / f"{batch['case_id']}.nii.gz"
            save_nifti(target, prediction.to("cpu", torch.uint8).numpy(), image_affine)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = self.rows
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[dict]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        unique = {(row["dataset"], row["Name"]): row for row in rows}  # a sampler may repeat a case to pad ranks
        rows = [unique[key] for key in sorted(unique)]
        columns = metric_columns(self.structures)
        self.rows = rows
        self.summary = summarise(rows, columns)
        for dataset, per_column in self.summary.items():
            for column, stats in per_column.items():
                structure, metric = _structure_metric(column)
                pl_module.log(f"test/{dataset}/{structure}/{metric}", stats["mean"], rank_zero_only=True)
        if trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_rows_csv(self.output_dir / METRICS_FILE, rows, columns)


def _structure_metric(column: str) -> tuple[str, str]:
    for name, structure in STRUCTURES.items():
        if column == structure.dsc_column:
            return name, "dsc"
        if column == structure.nsd_column:
            return name, "nsd"
    raise KeyError(column)
