"""Optional whole-case validation: DSC and NSD on whole held-out cases every N epochs.

Cheap patch-level pseudo-Dice runs every epoch; this costs a sliding-window prediction per case, so it is off
by default. Task 1 has no in-domain held-out cases, so it scores training cases (monitoring only, never test cases).
A partially annotated case is scored on its annotated axial slices only.
"""

from __future__ import annotations

import lightning.pytorch as pl

from covlight.benchmark import columns, structure_metric
from covlight.callbacks.scoring import score_against_truth
from covlight.metrics.results import CaseResults


class WholeCaseValidation(pl.Callback):
    def __init__(self, structures, every_n_epochs: int = 0):
        self.structures = list(structures)
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not due or trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        cases = datamodule.whole_cases(datamodule.records["val"] or datamodule.records["train"])
        results = CaseResults(columns(self.structures))
        for index in range(trainer.global_rank, len(cases), trainer.world_size):
            case, record = cases[index], cases.records[index]
            unannotated = () if record.annotated_slices is None else sorted(
                set(range(record.shape[2])) - set(record.annotated_slices))
            probabilities = pl_module.predict_volume(case["image"].to(pl_module.device))
            prediction = pl_module.labels_on_grid(probabilities, case["original_shape"].tolist(), case["nearest_axis"])
            results.append({"Name": case["case_id"], "dataset": case["dataset"],
                            **score_against_truth(prediction,
                                                  datamodule.label_path(case["dataset"], case["case_id"]),
                                                  self.structures,
                                                  case["annotated"], without_slices=unannotated,
                                                  partial=record.annotated_slices is not None)})
        for dataset, per_column in results.gathered().summary().items():
            for column, stats in per_column.items():
                structure, metric = structure_metric(column)
                pl_module.log(f"val_cases/{dataset}/{structure}/{metric}", stats["mean"])
