"""Optional whole-case validation: DSC and NSD on whole held-out cases every N epochs.

Cheap patch-level pseudo-Dice runs every epoch; this costs a sliding-window prediction per case, so it is off
by default. Task 1 has no in-domain held-out cases, so it scores training cases (monitoring only, never test cases).
"""

from __future__ import annotations

import lightning.pytorch as pl

from covlight.callbacks.scoring import (
    gather_rows,
    metric_columns,
    score_against_truth,
    structure_metric,
    summarise,
)
from covlight.data.datamodule import WholeCaseDataset


class WholeCaseValidation(pl.Callback):
    def __init__(self, structures, every_n_epochs: int = 0):
        self.structures = list(structures)
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not due or trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        cases = WholeCaseDataset(datamodule.records["val"] or datamodule.records["train"],
                                 datamodule.preprocessing(with_label=False))
        rows = []
        for index in range(trainer.global_rank, len(cases), trainer.world_size):
            case = cases[index]
            probabilities = pl_module.predict_volume(case["image"].to(pl_module.device))
            prediction = pl_module.labels_on_grid(probabilities, case["original_shape"].tolist())
            rows.append({"Name": case["case_id"], "dataset": case["dataset"],
                         **score_against_truth(prediction, case["label_path"], self.structures, case["annotated"])})
        summary = summarise(gather_rows(rows), metric_columns(self.structures))
        for dataset, columns in summary.items():
            for column, stats in columns.items():
                structure, metric = structure_metric(column)
                pl_module.log(f"val_cases/{dataset}/{structure}/{metric}", stats["mean"])
