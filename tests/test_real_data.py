"""Smoke test on a real chest CT (CIP, ../shared/data): the lung subtask trains a few steps and is scored."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
from torch.optim.lr_scheduler import PolynomialLR

from covlight.callbacks.scoring import CaseScoring
from covlight.data.canonical import hu_to_0_255, read_dataset, write_case, write_dataset_json
from covlight.data.datamodule import SegmentationDataModule
from covlight.data.options import Preprocessing, Sampling, Validation
from covlight.methods.supervised import SupervisedSegmentation
from covlight.nets import UNet
from covlight.splits import Split


def import_cip(shared_data, root):
    """The derived CIP NIfTI (LPS, HU, labels 1 left / 2 right) written as a canonical (RAS+, 0..255) case."""
    folder = shared_data / "cip_chest_ct64" / "derived"
    image = nib.as_closest_canonical(nib.load(folder / "ct-64.nii.gz"))
    label = nib.as_closest_canonical(nib.load(folder / "lung_left1_right2-64.nii.gz"))
    array = np.asarray(label.dataobj, dtype=np.uint8)
    entry = write_case(root, "cip_ct64", hu_to_0_255(np.asarray(image.dataobj)), array, image.affine, "hu")
    write_dataset_json(root, "cip_chest_ct64", {"cip_ct64": entry}, ["left_lung", "right_lung"],
                       source="Chest Imaging Platform test data", licence="CIP licence (BSD-style)")
    return array


def test_cip_chest_ct_lung_trains_and_scores(shared_data, tmp_path):
    label = import_cip(shared_data, tmp_path / "cip")
    left_x = np.argwhere(label == 1)[:, 0].mean()
    right_x = np.argwhere(label == 2)[:, 0].mean()
    assert left_x < right_x, "canonical RAS+: the left lung lies at low x"
    assert read_dataset(tmp_path / "cip").cases["cip_ct64"]["shape"] == [64, 64, 79]

    pl.seed_everything(0)
    split = Split(train={"cip": ["cip_ct64"]}, val={}, test={"cip": ["cip_ct64"]})
    datamodule = SegmentationDataModule(
        root=str(tmp_path), split=split, label_values=[0, 1, 2], spatial_dims=3, patch_size=[32, 32, 16],
        batch_size=2, preprocessing=Preprocessing(target_spacing="auto"),
        sampling=Sampling(batches_per_epoch=4, samples_per_volume=4, patch_buffer=8, num_workers=0),
        validation=Validation(patches_per_case=1),
    )
    net = UNet(3, 1, 3, [8, 16, 32], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=True)
    module = SupervisedSegmentation(
        net, spatial_dims=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.99, nesterov=True),
        scheduler=partial(PolynomialLR, power=0.9), label_values=[0, 1, 2],
        inference={"patch_size": [32, 32, 16], "overlap": 0.5},
    )
    scoring = CaseScoring(str(tmp_path / "run"), ["left_lung", "right_lung"], [0, 1, 2], save_predictions=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[scoring], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule)
    (row,) = scoring.results.rows
    assert row["Name"] == "cip_ct64"
    for column in ("L-lungDSC", "L-lung-1mm", "R-lungDSC", "R-lung-1mm"):
        assert 0.0 <= row[column] <= 1.0 and not math.isnan(row[column])
    assert (tmp_path / "run" / "metrics.csv").is_file()


def test_png_slices_import_and_train(shared_data, tmp_path):
    """The real PNG slice stack (both lungs in one mask + infection) through the folder importer, then a 2D model
    trains a few steps on some slices and is scored on others."""
    from covlight.prepare import main as prepare

    source = shared_data / "covid_ctseg_png256_case01"
    code = prepare(["folder", "--src", str(source), "--name", "png_case01", "--images", "ct/*.png",
                    "--labels", "lungs/*.png", "--label-map", "255:1", "--labels", "infection/*.png",
                    "--label-map", "255:3", "--split-lungs", "--intensity", "8bit", "--dest", str(tmp_path)])
    assert code == 0
    cases = sorted(read_dataset(tmp_path / "png_case01").cases)
    assert len(cases) == 159
    pl.seed_everything(0)
    split = Split(train={"png_case01": cases[60:64]}, val={}, test={"png_case01": cases[80:82]})
    datamodule = SegmentationDataModule(
        root=str(tmp_path), split=split, label_values=[0, 1, 2, 3], spatial_dims=2, patch_size=[64, 64, 1],
        batch_size=2, sampling=Sampling(batches_per_epoch=3, samples_per_volume=2, patch_buffer=4, num_workers=0),
        validation=Validation(patches_per_case=1))
    net = UNet(2, 1, 4, [8, 16, 32], [1, 2, 2], deep_supervision=True)
    module = SupervisedSegmentation(
        net, spatial_dims=2, optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.99, nesterov=True),
        label_values=[0, 1, 2, 3],
        inference={"patch_size": [64, 64, 1], "overlap": 0.5, "batch_size": 1})
    scoring = CaseScoring(str(tmp_path / "run"), ["left_lung", "right_lung", "infection"], [0, 1, 2, 3],
                          save_predictions=False, overlay_cases=0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[scoring], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule)
    assert [row["Name"] for row in scoring.results.rows] == cases[80:82]
    assert all(0.0 <= row["L-lungDSC"] <= 1.0 for row in scoring.results.rows)
