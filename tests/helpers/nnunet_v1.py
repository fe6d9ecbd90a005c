"""nnU-Net v1 model folders written as v1 writes them, with v1's own Generic_UNet (the test-only reference
`nnunet==1.7.1`, installed with --no-deps), for the conversion tests. Nothing is downloaded."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

REASON = ("the reference nnunet==1.7.1 is not installed (the dev extra: pip install --no-deps nnunet==1.7.1 "
          "batchgenerators==0.24)")


def reference(module: str = "nnunet.network_architecture.generic_UNet"):
    """A module of nnU-Net v1, or the test is skipped with the reason."""
    return pytest.importorskip(module, reason=REASON)

# The foreground intensity properties v1 records for a chest CT task (HU), shaped as in its plans.
INTENSITY = OrderedDict(median=-742.0, mean=-634.2, sd=287.1, mn=-1024.0, mx=1520.0, percentile_99_5=186.0,
                        percentile_00_5=-1017.0)
LABELS = {"0": "background", "1": "left lung", "2": "right lung", "3": "infection"}


def plans(dims: int, patch=None) -> dict:
    """A plans dict shaped like the benchmark's 3d_fullres (anisotropic first stage) or 2d plans."""
    if dims == 3:
        stage = {"batch_size": 2, "num_pool_per_axis": [3, 5, 5], "patch_size": np.array(patch or [40, 160, 160]),
                 "median_patient_size_in_voxels": np.array([120, 512, 512]),
                 "current_spacing": np.array([2.5, 0.78125, 0.78125]),
                 "original_spacing": np.array([2.5, 0.78125, 0.78125]), "do_dummy_2D_data_aug": True,
                 "pool_op_kernel_sizes": [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                 "conv_kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]}
    else:
        stage = {"batch_size": 12, "num_pool_per_axis": [5, 5], "patch_size": np.array(patch or [512, 512]),
                 "median_patient_size_in_voxels": np.array([120, 512, 512]),
                 "current_spacing": np.array([2.5, 0.78125, 0.78125]),
                 "original_spacing": np.array([2.5, 0.78125, 0.78125]), "do_dummy_2D_data_aug": False,
                 "pool_op_kernel_sizes": [[2, 2]] * 5, "conv_kernel_sizes": [[3, 3]] * 6}
    return {
        "num_stages": 1, "num_modalities": 1, "modalities": {0: "CT"}, "normalization_schemes": OrderedDict({0: "CT"}),
        "dataset_properties": {"all_classes": [1, 2, 3], "modalities": {0: "CT"},
                               "intensityproperties": OrderedDict({0: INTENSITY})},
        "num_classes": 3, "all_classes": [1, 2, 3], "base_num_features": 32, "use_mask_for_norm": OrderedDict({0: False}),
        "keep_only_largest_region": None, "min_region_size_per_class": None, "min_size_per_class": None,
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "conv_per_stage": 2,
        "data_identifier": "nnUNetData_plans_v2.1", "preprocessor_name": "GenericPreprocessor",
        "plans_per_stage": {0: stage},
    }


def v1_network(plan: dict) -> torch.nn.Module:
    """Generic_UNet exactly as nnUNetTrainerV2.initialize_network builds it, with random (non-zero) weights."""
    stage = plan["plans_per_stage"][0]
    three_d = len(stage["patch_size"]) == 3
    nn, v1 = torch.nn, reference()
    network = v1.Generic_UNet(1, plan["base_num_features"], plan["num_classes"] + 1, len(stage["pool_op_kernel_sizes"]),
                           plan["conv_per_stage"], 2, nn.Conv3d if three_d else nn.Conv2d,
                           nn.InstanceNorm3d if three_d else nn.InstanceNorm2d, {"eps": 1e-5, "affine": True},
                           nn.Dropout3d if three_d else nn.Dropout2d, {"p": 0, "inplace": True},
                           nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True}, True, False, lambda x: x,
                           v1.InitWeights_He(1e-2), stage["pool_op_kernel_sizes"], stage["conv_kernel_sizes"],
                           False, True, True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():  # biases and norm affines away from their 0 / 1 initial values
            if parameter.ndim == 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1 + parameter)
    return network


def write_model_folder(root: Path, plan: dict, network: torch.nn.Module, fold: int = 0,
                       trainer: str = "nnUNetTrainerV2", labels=LABELS) -> Path:
    """<root>/<network>/Task101_COVIDLungInfection/<trainer>__nnUNetPlansv2.1/fold_<k>/ as v1's trainer leaves
    it (network_trainer.save_checkpoint, nnUNetTrainer.save_checkpoint), plans.pkl beside the folds, and the task's
    dataset.json two folders up. Returns the fold folder."""
    dims = len(plan["plans_per_stage"][0]["patch_size"])
    base = root / ("3d_fullres" if dims == 3 else "2d") / "Task101_COVIDLungInfection" / f"{trainer}__nnUNetPlansv2.1"
    fold_dir = base / f"fold_{fold}"
    fold_dir.mkdir(parents=True)
    with open(base / "plans.pkl", "wb") as handle:
        pickle.dump(plan, handle)
    optimizer = torch.optim.SGD(network.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    save_this = {
        "epoch": 1000,
        "state_dict": {k: v.cpu() for k, v in network.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict(),
        "lr_scheduler_state_dict": None,
        "plot_stuff": ([np.float64(0.5), np.float64(0.4)], [np.float64(0.45)], [], [np.float64(0.81)]),
        "best_stuff": (998, np.float64(0.4), np.float64(0.8)),
    }
    torch.save(save_this, fold_dir / "model_final_checkpoint.model")
    info = OrderedDict()
    info["init"] = (str(base / "plans.pkl"), fold, str(fold_dir), "/data/nnUNet_preprocessed/Task101", False, 0,
                    True, True, True)
    info["name"] = trainer
    info["class"] = f"<class 'nnunet.training.network_training.{trainer}.{trainer}'>"
    info["plans"] = plan
    with open(fold_dir / "model_final_checkpoint.model.pkl", "wb") as handle:
        pickle.dump(info, handle)
    if labels is not None:
        (base.parent / "dataset.json").write_text(json.dumps({"name": "COVID", "labels": labels,
                                                              "modality": {"0": "CT"}}), encoding="utf-8")
    return fold_dir
