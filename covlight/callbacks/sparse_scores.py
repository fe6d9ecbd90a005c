"""How a model trained on sparse slices does on the slices nobody annotated (where the full truth is known).

After the test, each training case whose sparse annotation was simulated from a full label
(`data.sparse_annotation.slices_per_case`) is predicted whole and scored twice against its full truth: on its
annotated axial slices (the model saw their labels) and on the others (it did not). Rows go to
`metrics_training_slices.csv` (Name, dataset, slices = annotated | unannotated, then the metric columns). Training
cases only, never test cases: monitoring, as validation.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

from covlight.benchmark import columns
from covlight.callbacks.scoring import score_against_truth
from covlight.metrics.results import CaseResults

TRAINING_SLICES_FILE = "metrics_training_slices.csv"


class SparseSliceScoring(pl.Callback):
    def __init__(self, output_dir: str, structures, enabled: bool = True):
        self.output_dir = Path(output_dir)
        self.structures = list(structures)
        self.enabled = enabled

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not self.enabled or not trainer.is_global_zero or not hasattr(datamodule, "simulated_records"):
            return
        records = datamodule.simulated_records()
        if not records:
            return
        cases = datamodule.whole_cases(records)
        results = CaseResults(columns(self.structures), keys=("Name", "dataset", "slices"))
        for index, record in enumerate(records):
            case = cases[index]
            probabilities = pl_module.predict_volume(case["image"].to(pl_module.device))
            prediction = pl_module.labels_on_grid(probabilities, case["original_shape"].tolist(), case["nearest_axis"])
            annotated = set(record.annotated_slices)
            others = [z for z in range(record.shape[2]) if z not in annotated]
            for kind, left_out in (("annotated", others), ("unannotated", sorted(annotated))):
                if len(left_out) == record.shape[2]:
                    continue
                results.append({"Name": record.case_id, "dataset": record.dataset, "slices": kind,
                                **score_against_truth(prediction, record.label_path, self.structures,
                                                      record.annotated, without_slices=left_out)})
        results.gathered().write(self.output_dir / TRAINING_SLICES_FILE)
