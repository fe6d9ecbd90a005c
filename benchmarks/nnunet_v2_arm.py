"""The reference arm of benchmarks/slices_study.py: nnU-Net v2's own `2d` configuration on the same folds and the
same number of optimizer steps, run from its own virtual environment (nnU-Net v2 would move covlight's torch pin).

Set up once, with a torch and a torchvision built for each other (torch named with nnunetv2 so pip keeps it):

    python -m venv ~/.cache/covlight/nnunet-venv
    ~/.cache/covlight/nnunet-venv/bin/pip install "torch==2.14.1" "torchvision==0.29.1" && \\
        ~/.cache/covlight/nnunet-venv/bin/pip install nnunetv2 "torch==2.14.1" "torchvision==0.29.1"

then `slices_study.py --arms nnunet_v2 --nnunet-python ~/.cache/covlight/nnunet-venv/bin/python`.

torchvision is not optional: nnUNetv2_train finds a trainer by importing every trainer module, and one of them
(Primus) imports timm, which imports torchvision. A torchvision that does not match the torch beside it (the
package index's torchvision next to a CPU build of torch 2.13.0) fails there with "operator torchvision::nms does
not exist" before training starts. This environment is nnU-Net's own, so covlight's torch pin does not apply to it.

What nnU-Net gets: the 50 slices as 8-bit PNG (its NaturalImage2DIO), labels 0/1, the channel normalised by
z-score (what its documentation advises for non-CT images; the slices are windowed pictures, not HU), the study's
folds as its splits_final.json, its own plans (patch, batch size, network), its trainer with only the length
changed: `epochs x iterations` equal to the study's steps (nnU-Net finds trainers only inside its package, so a
one-class file is written there), 5 validation iterations per epoch instead of 50 (covlight's arms validate
little too), a checkpoint every epoch instead of every 50 (so that a killed fold resumes instead of starting
again), on the CPU. Prediction: nnUNetv2_predict of the fold's model with --save_probabilities (its default
test-time mirroring on, as nnU-Net predicts).
On these 50 slices nnU-Net plans a batch of 2 patches of 448 x 384 and a 7-stage net of 32..512 features; on
the CPU its trainer uses every core whatever OMP_NUM_THREADS says.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATASET_ID, DATASET_NAME = 501, "Dataset501_CovidSemiSeg"
TRAINER = "nnUNetTrainer_covlightBudget"
TRAINER_SOURCE = '''import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_covlightBudget(nnUNetTrainer):
    """nnU-Net's trainer with the length of covlight's slice study (epochs x iterations = its optimizer steps)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ["COVLIGHT_NNUNET_EPOCHS"])
        self.num_iterations_per_epoch = int(os.environ["COVLIGHT_NNUNET_ITERATIONS"])
        self.num_val_iterations_per_epoch = 5
        self.save_every = 1  # a run of a dozen epochs killed midway resumes from its last epoch, not from scratch
'''


class NnUNetV2:
    """nnU-Net v2 in its own environment, its raw/preprocessed/results folders under `work`."""

    def __init__(self, python: Path, work: Path, repeat: str, device: str = "cpu"):
        """`repeat` names a repeat (`seed1`; the study adds its budget where it is not the study's): each has its own
        results folder (nnU-Net draws its own randomness, unseeded), so a second seed, or another budget, trains a
        model of its own instead of finding the first one's."""
        self.python = python.expanduser()
        self.bin = self.python.parent
        self.root = work / "nnunet_v2"
        self.results = self.root / "results" / repeat
        self.device = device  # cpu or cuda, for training and prediction
        self.env = {**os.environ, "nnUNet_raw": str(self.root / "raw"),
                    "nnUNet_preprocessed": str(self.root / "preprocessed"),
                    "nnUNet_results": str(self.results), "nnUNet_n_proc_DA": "1"}
        if not (self.bin / "nnUNetv2_train").is_file():
            raise FileNotFoundError(f"{self.bin / 'nnUNetv2_train'} not found: give --nnunet-python the python of "
                                    "a virtual environment with nnunetv2 installed (see benchmarks/nnunet_v2_arm.py)")

    def prepare(self, images: Path, masks: Path, cases: list[str], folds: list[list[str]]) -> None:
        """The raw dataset, nnU-Net's own plans and preprocessing, and the study's folds (once)."""
        raw = self.root / "raw" / DATASET_NAME
        if not (raw / "dataset.json").is_file():
            (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
            (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
            for case in cases:
                Image.open(images / f"{case}.jpg").convert("L").save(raw / "imagesTr" / f"case{case}_0000.png")
                truth = (np.asarray(Image.open(masks / f"{case}.png").convert("L")) > 127).astype(np.uint8)
                Image.fromarray(truth).save(raw / "labelsTr" / f"case{case}.png")
            dataset = {"channel_names": {"0": "zscore"}, "labels": {"background": 0, "infection": 1},
                       "numTraining": len(cases), "file_ending": ".png"}
            (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
        preprocessed = self.root / "preprocessed" / DATASET_NAME
        if not (preprocessed / "nnUNetPlans.json").is_file():
            self.run("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1",
                     "--verify_dataset_integrity")
        splits = [{"train": [f"case{c}" for c in cases if c not in fold], "val": [f"case{c}" for c in fold]}
                  for fold in folds]
        (preprocessed / "splits_final.json").write_text(json.dumps(splits, indent=1))
        self._install_trainer()

    def _install_trainer(self) -> None:
        package = subprocess.run([str(self.python), "-c", "import nnunetv2, os; print(os.path.dirname("
                                  "nnunetv2.__file__))"], check=True, capture_output=True, text=True).stdout.strip()
        target = Path(package) / "training" / "nnUNetTrainer" / "variants" / f"{TRAINER}.py"
        if not target.is_file() or target.read_text() != TRAINER_SOURCE:
            target.write_text(TRAINER_SOURCE)

    def train(self, fold: int, epochs: int, iterations: int) -> tuple[Path, float | None]:
        """Train fold `fold` (continuing its checkpoint after an interruption); the fold's model folder and its
        training time. The time is None for a resumed run (this call saw only part of it); a model finished by an
        earlier call keeps the time that call recorded."""
        model = self.results / DATASET_NAME / f"{TRAINER}__nnUNetPlans__2d" / f"fold_{fold}"
        timing = model / "covlight_seconds.json"
        if (model / "checkpoint_final.pth").is_file():
            return model, json.loads(timing.read_text())["seconds"] if timing.is_file() else None
        resumed = (model / "checkpoint_latest.pth").is_file()
        start = time.perf_counter()
        self.run("nnUNetv2_train", str(DATASET_ID), "2d", str(fold), "-tr", TRAINER, "-device", self.device,
                 *(["--c"] if resumed else []),
                 env={"COVLIGHT_NNUNET_EPOCHS": str(epochs), "COVLIGHT_NNUNET_ITERATIONS": str(iterations)})
        seconds = None if resumed else time.perf_counter() - start
        timing.write_text(json.dumps({"seconds": seconds, "resumed": resumed}))
        return model, seconds

    def batch_size(self) -> int:
        plans = json.loads((self.root / "preprocessed" / DATASET_NAME / "nnUNetPlans.json").read_text())
        return int(plans["configurations"]["2d"]["batch_size"])

    def predict(self, fold: int, cases: list[str], output: Path) -> dict[str, np.ndarray]:
        """The foreground probability of each case (nnU-Net reads a PNG as (1, rows, cols): picture orientation)."""
        inputs = output / "input"
        inputs.mkdir(parents=True, exist_ok=True)
        raw = self.root / "raw" / DATASET_NAME / "imagesTr"
        for case in cases:
            link = inputs / f"case{case}_0000.png"
            if not link.exists():
                link.symlink_to(raw / f"case{case}_0000.png")
        predictions = output / "predicted"
        self.run("nnUNetv2_predict", "-i", str(inputs), "-o", str(predictions), "-d", str(DATASET_ID), "-c", "2d",
                 "-f", str(fold), "-tr", TRAINER, "--save_probabilities", "-device", self.device, "-npp", "1", "-nps", "1")
        return {case: np.load(predictions / f"case{case}.npz")["probabilities"][1, 0] for case in cases}

    def run(self, command: str, *arguments: str, env: dict | None = None) -> None:
        subprocess.run([str(self.bin / command), *arguments], check=True, env={**self.env, **(env or {})})
