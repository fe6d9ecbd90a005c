"""Whole-case scoring at test time: DSC and NSD per case on the prediction's device, one row per case.

Rows of all ranks are gathered before anything is averaged or written (covlight.metrics.results), so under DDP
every case counts once. `metrics.csv` is written whole (temporary name, then rename) and only by rank 0.

A semi-automatic method's test batches hold the case's seeds (covlight.data.interaction). Its seed slices are then
left out of `metrics.csv` (the benchmark's columns, what the report shows): both the prediction and the truth lose
those axial slices before scoring. `metrics_with_seed_slices.csv` scores the whole volume, and `annotation.json`
records each case's effort (seed slices, strokes).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from covlight.atomic import write_json
from covlight.benchmark import (
    ANNOTATION_FILE,
    LABELS,
    METRICS_FILE,
    STRUCTURES,
    UNKNOWN_LABEL,
    columns,
    structure_metric,
)
from covlight.callbacks.overlays import save_overlay
from covlight.data.canonical import read_nifti, save_nifti
from covlight.errors import ConfigError, DatasetError
from covlight.metrics import score_case
from covlight.metrics.results import CaseResults
from covlight.postprocess import largest_component, parse_spec

SEEDED_METRICS_FILE = "metrics_with_seed_slices.csv"  # a semi-automatic run's scores on the whole volume


def load_truth(label_path: str, device: torch.device, partial: bool = False) -> tuple[torch.Tensor, tuple[float, ...]]:
    """A ground-truth label map on `device` and its spacing (from the header, as the benchmark's script).
    `partial`: a partially annotated case, whose UNKNOWN_LABEL voxels are allowed."""
    data, label_file = read_nifti(Path(label_path))
    truth = torch.from_numpy(np.asarray(data, dtype=np.uint8)).to(device)
    allowed = set(LABELS.values()) | ({UNKNOWN_LABEL} if partial else set())
    unexpected = sorted(set(torch.unique(truth).tolist()) - allowed)
    if unexpected:
        raise DatasetError(f"{label_path}: unexpected label values {unexpected}; canonical labels are {LABELS}. "
                           "Re-import with the right label mapping.")
    return truth, tuple(float(s) for s in label_file.header.get_zooms()[:3])


def score_against_truth(prediction: torch.Tensor, label_path: str, structures, annotated,
                        without_slices=(), partial: bool = False) -> dict[str, float]:
    """Score a prediction on its original grid against the case's ground truth, for the structures the
    ground truth annotates; the other columns are NaN. `without_slices`: axial (z) slices removed from both
    before scoring (a semi-automatic method's seed slices, a partially annotated case's unannotated slices); a
    slice holding UNKNOWN_LABEL (not annotated) voxels of a `partial` case is removed too."""
    truth, spacing = load_truth(label_path, prediction.device, partial)
    if tuple(truth.shape) != tuple(prediction.shape):
        raise RuntimeError(
            f"{label_path}: shape {tuple(truth.shape)} differs from the prediction's {tuple(prediction.shape)}; "
            "the case's geometry changed since the dataset was imported."
        )
    unknown = (truth == UNKNOWN_LABEL).any(dim=(0, 1))
    if without_slices or unknown.any():
        dropped = set(without_slices) | set(torch.nonzero(unknown).flatten().tolist())
        kept = torch.tensor([z for z in range(truth.shape[2]) if z not in dropped], dtype=torch.long,
                            device=truth.device)
        truth, prediction = truth[:, :, kept], prediction[:, :, kept]
    scores = {c: math.nan for c in columns(structures)}
    scores.update(score_case(prediction, truth, spacing, structures=[s for s in structures if s in annotated]))
    return scores


class CaseScoring(pl.Callback):
    """Score each test case against its ground truth on the original grid; write `metrics.csv`; log means."""

    def __init__(self, output_dir: str, structures, label_values, save_predictions: bool = True,
                 overlay_cases: int = 3, postprocess: str | None = None):
        self.output_dir = Path(output_dir)
        self.structures = list(structures)
        # label values whose prediction keeps its largest component only (covlight.postprocess), before scoring
        self.keep_largest = [STRUCTURES[s].label for s in parse_spec(postprocess, self.structures)] \
            if postprocess else []
        self.label_values = list(label_values)
        self.save_predictions = save_predictions
        self.overlay_cases = overlay_cases
        self.results = CaseResults(columns(self.structures))
        self.with_seed_slices = CaseResults(columns(self.structures))
        self.effort: dict[str, dict] = {}
        self.overlays: list[Path] = []
        self.summary: dict = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results, self.overlays = CaseResults(columns(self.structures)), []
        self.with_seed_slices, self.effort = CaseResults(columns(self.structures)), {}
        path = self.output_dir / METRICS_FILE
        if path.exists():
            raise ConfigError(f"{path} exists: a finished test is never overwritten; start a new run.")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        prediction = outputs["prediction"]
        if self.keep_largest:
            kept = largest_component(prediction.cpu().numpy(), self.keep_largest)
            prediction = torch.from_numpy(kept).to(prediction.device)
        label_path = trainer.datamodule.label_path(batch["dataset"], batch["case_id"])
        identity = {"Name": batch["case_id"], "dataset": batch["dataset"]}
        seeds = batch.get("seeds")
        seed_slices = seeds.slices if seeds is not None else ()
        self.results.append({**identity, **score_against_truth(prediction, label_path, self.structures,
                                                               batch["annotated"], without_slices=seed_slices)})
        if seeds is not None:
            self.with_seed_slices.append({**identity, **score_against_truth(prediction, label_path, self.structures,
                                                                            batch["annotated"])})
            self.effort[f"{batch['dataset']}/{batch['case_id']}"] = seeds.effort()
        if trainer.is_global_zero and len(self.overlays) < self.overlay_cases:
            self.overlays.append(self._overlay(batch, label_path, prediction))
        if self.save_predictions:
            image_affine = nib.load(batch["image_path"]).affine
            target = self.output_dir / "predictions" / batch["dataset"] / f"{batch['case_id']}.nii.gz"
            save_nifti(target, prediction.to("cpu", torch.uint8).numpy(), image_affine)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results = self.results.gathered()
        self.summary = self.results.summary()
        for dataset, per_column in self.summary.items():
            for column, stats in per_column.items():
                structure, metric = structure_metric(column)
                pl_module.log(f"test/{dataset}/{structure}/{metric}", stats["mean"], rank_zero_only=True)
        if self.effort:
            self._write_seeded(trainer, pl_module)
        if trainer.is_global_zero:
            self.results.write(self.output_dir / METRICS_FILE)
            header = [*self.results.keys, *self.results.columns]
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_table(key="test/cases", columns=header,
                                     data=[[row[c] for c in header] for row in self.results.rows])
                    if self.overlays:
                        logger.log_image(key="test/overlays", images=[str(p) for p in self.overlays],
                                         caption=[p.stem for p in self.overlays])

    def _write_seeded(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A semi-automatic run: whole-volume scores beside metrics.csv, and the annotation effort per case."""
        self.with_seed_slices = self.with_seed_slices.gathered()
        efforts = [self.effort]
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            efforts = [None] * dist.get_world_size()
            dist.all_gather_object(efforts, self.effort)
        effort = {case: entry for part in efforts for case, entry in sorted(part.items())}
        slices = [entry["slices"] for entry in effort.values()]
        strokes = [entry["strokes"] for entry in effort.values()]
        pl_module.log("test/annotation/slices_per_scan", float(np.mean(slices)), rank_zero_only=True)
        pl_module.log("test/annotation/strokes_per_scan", float(np.mean(strokes)), rank_zero_only=True)
        if trainer.is_global_zero:
            self.with_seed_slices.write(self.output_dir / SEEDED_METRICS_FILE)
            write_json(self.output_dir / ANNOTATION_FILE, {
                "scored": f"{METRICS_FILE} leaves each case's seed slices out; {SEEDED_METRICS_FILE} keeps them",
                "slices_per_scan": float(np.mean(slices)), "strokes_per_scan": float(np.mean(strokes)),
                "cases": effort})

    def _overlay(self, batch: dict, label_path: Path, prediction: torch.Tensor) -> Path:
        image = np.asarray(nib.load(batch["image_path"]).dataobj, dtype=np.float32)
        truth = np.asarray(nib.load(label_path).dataobj, dtype=np.uint8)
        path = self.output_dir / "overlays" / batch["dataset"] / f"{batch['case_id']}.png"
        return save_overlay(image, truth, prediction.cpu().numpy(), path, f"{batch['dataset']} / {batch['case_id']}",
                            label_values=[v for v in self.label_values if v])

