"""An nnU-Net v1 trained model (e.g. one of the benchmark's released baselines) as a covlight run folder.

v1 writes `<network>/<TaskXXX_Name>/<trainer>__<plans>/` with `plans.pkl` and `fold_<k>/` folders, each holding
`model_final_checkpoint.model` (a torch checkpoint) and `model_final_checkpoint.model.pkl` (the trainer's name,
its init arguments and the plans). Reading them:

- the network: nnUNetTrainerV2's Generic_UNet from the plans' stage (pool and conv kernels per stage, base
  features doubling to the cap, 320 in 3D and 480 in 2D, instance norm, LeakyReLU 0.01, deep supervision, strided
  convs down and transposed convs up) is covlight's `UNet` with two differences, carried over exactly: a decoder
  stage's kernel is the one of the stage below it (`decoder_kernel_sizes`), and v1's transposed convs and heads
  have no bias (covlight's are set to 0). `NNUNetV1UNet` feeds it as v1 did (CT normalisation, axis order);
- the preprocessing: the stage's target spacing, resampled by v1's rule (covlight.data.resampling), and
  `transpose_forward`, with the training images' orientation (which v1 never records: given by the user) to put
  covlight's RAS+ axes in v1's order;
- the labels: v1's class indices named in the task's `dataset.json` (or given as `1=left_lung,...`), mapped to
  covlight's canonical values.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covlight.benchmark import LABELS, STRUCTURES, SUBTASKS
from covlight.convert.unpickling import load_pickle, load_torch
from covlight.errors import DatasetError

CHECKPOINT = "model_final_checkpoint.model"
INFO = CHECKPOINT + ".pkl"
PLANS = "plans.pkl"
# Trainers whose network is nnUNetTrainerV2's Generic_UNet (they differ from it in training only).
TRAINERS = ("nnUNetTrainerV2",)
MAX_FEATURES = {3: 320, 2: 480}  # Generic_UNet.MAX_NUM_FILTERS_3D, MAX_FILTERS_2D
HU_WINDOW = (-1250.0, 250.0)  # covlight's stored 0..255 window (docs/ARCHITECTURE.md)

# Names a v1 dataset.json gives its labels (lower case, '_' and '-' as spaces), per covlight structure. Task 2's
# infection models learn a non-COVID lesion (tumour, gross target volume, pleural effusion) as "infection".
LABEL_NAMES = {
    "left_lung": ("left lung", "lung left", "leftlung", "l lung", "left"),
    "right_lung": ("right lung", "lung right", "rightlung", "r lung", "right"),
    "infection": ("infection", "lesion", "lesions", "covid", "covid 19", "covid19", "covid 19 infection",
                  "tumor", "tumour", "lung tumor", "lung tumour", "gtv", "gross target volume", "gross tumor volume",
                  "pleural effusion", "effusion", "pe"),
}


@dataclass
class V1Model:
    """One fold of a v1 model folder, read."""

    checkpoint_path: Path
    trainer: str
    plans: dict
    stage: int
    state_dict: dict

    @property
    def stage_plans(self) -> dict:
        return self.plans["plans_per_stage"][self.stage]

    @property
    def spatial_dims(self) -> int:
        return len(self.stage_plans["patch_size"])


def find_fold(folder: Path) -> Path:
    """The fold folder holding the checkpoint: `folder` itself, or its only `fold_<k>` (give the fold otherwise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder; give an nnU-Net v1 model folder (<network>/<TaskXXX>/"
                           f"<trainer>__<plans>/fold_<k>)")
    if (folder / CHECKPOINT).exists() or (folder / INFO).exists() or re.fullmatch(r"fold_\d+", folder.name):
        return folder
    folds = sorted(folder.glob("fold_*"))
    if len(folds) != 1:
        found = ", ".join(f.name for f in folds) or "none"
        raise DatasetError(f"{folder}: give one fold folder (fold_<k>) of this model, found {found}")
    return folds[0]


def read_model(folder: Path) -> V1Model:
    """The fold's checkpoint, its pkl and the plans beside the folds, each checked; one clear error per problem."""
    fold = find_fold(folder)
    checkpoint_path, info_path, plans_path = fold / CHECKPOINT, fold / INFO, fold.parent / PLANS
    for path, what in ((checkpoint_path, "checkpoint"), (info_path, "checkpoint's pkl (the trainer and plans)"),
                       (plans_path, "plans file, beside the fold folders")):
        if not path.is_file():
            raise DatasetError(f"{path}: no such file, the model's {what}. Copy the whole model folder as nnU-Net "
                               "v1 wrote it (unpack the archive again)")
    info = load_pickle(info_path)
    if not isinstance(info, Mapping) or "name" not in info:
        raise DatasetError(f"{info_path} holds no trainer name: not an nnU-Net v1 checkpoint pkl")
    trainer = str(info["name"])
    if trainer not in TRAINERS:
        raise DatasetError(f"{info_path}: trainer {trainer} is not one whose network covlight knows; covlight "
                           f"converts models of {', '.join(TRAINERS)} (Generic_UNet as nnU-Net v1 builds it by "
                           "default). Use such a model, or run this one with nnU-Net v1 itself")
    plans = load_pickle(plans_path)
    if not isinstance(plans, Mapping) or "plans_per_stage" not in plans:
        raise DatasetError(f"{plans_path} holds no plans_per_stage: not an nnU-Net v1 plans file")
    init = info.get("init") or ()
    stage = init[5] if len(init) > 5 and init[5] is not None else None
    stages = list(plans["plans_per_stage"])
    if stage is None:
        if len(stages) != 1:
            raise DatasetError(f"{info_path} does not say which of the {len(stages)} stages of {plans_path} it "
                               "trained; a cascade's low-resolution stage cannot be converted")
        stage = stages[0]
    if stage not in plans["plans_per_stage"]:
        raise DatasetError(f"{info_path} trained stage {stage}, which {plans_path} lacks ({stages}); the plans file "
                           "belongs to another model")
    checkpoint = load_torch(checkpoint_path)
    return V1Model(checkpoint_path, trainer, dict(plans), stage, dict(checkpoint["state_dict"]))


# ---------------------------------------------------------------------------------------------------- network
def features_per_stage(base: int, stages: int, cap: int) -> list[int]:
    """Generic_UNet's channels: base, doubled after each stage (rounded), capped."""
    features, f = [], base
    for _ in range(stages):
        features.append(f)
        f = min(int(np.round(f * 2)), cap)
    return features


def unet_kwargs(model: V1Model, num_classes: int) -> dict:
    """covlight `UNet` arguments of the model's Generic_UNet (in v1's axis order)."""
    stage, path = model.stage_plans, model.checkpoint_path.parent.parent / PLANS
    dims = model.spatial_dims
    pools = [[int(k) for k in p] for p in stage["pool_op_kernel_sizes"]]
    kernels = [[int(k) for k in c] for c in stage["conv_kernel_sizes"]]
    if len(kernels) != len(pools) + 1 or any(len(k) != dims for k in kernels + pools):
        raise DatasetError(f"{path}: stage {model.stage} has {len(pools)} pool and {len(kernels)} conv kernel sizes "
                           f"for a {dims}D patch; a Generic_UNet needs one conv kernel more than pool kernels")
    if any(k not in (1, 3) for kernel in kernels for k in kernel):
        raise DatasetError(f"{path}: conv kernel sizes {kernels}: v1 pads only kernels of 3 (and 1), so a network "
                           "with other kernels is not one covlight can rebuild exactly")
    if int(model.plans.get("num_modalities", 1)) != 1:
        raise DatasetError(f"{path}: {model.plans['num_modalities']} input modalities; covlight feeds one CT")
    stages = len(kernels)
    return {
        "spatial_dims": dims,
        "in_channels": 1,
        "num_classes": num_classes,
        "features_per_stage": features_per_stage(int(model.plans["base_num_features"]), stages, MAX_FEATURES[dims]),
        "strides": [[1] * dims, *pools],
        "kernel_sizes": kernels,
        "decoder_kernel_sizes": kernels[:0:-1],  # decoder stage s (deepest first) uses conv kernel n-1-s
        "n_conv_per_stage": int(model.plans.get("conv_per_stage", 2)),
        "n_conv_per_stage_decoder": int(model.plans.get("conv_per_stage", 2)),
        "norm": "instance",
        "negative_slope": 0.01,
        "deep_supervision": True,
    }


def _blocks(prefix: str, n_conv: int, last_apart: bool) -> list[str]:
    """v1's conv blocks of one stage: `prefix.blocks.i`, or for the bottleneck and decoder stages (n - 1 convs, then
    one) `prefix.0.blocks.i` and `prefix.1.blocks.0`."""
    if not last_apart:
        return [f"{prefix}.blocks.{i}" for i in range(n_conv)]
    return [f"{prefix}.0.blocks.{i}" for i in range(n_conv - 1)] + [f"{prefix}.1.blocks.0"]


def covlight_weights(v1_state: Mapping, kwargs: dict, checkpoint_path: Path) -> dict:
    """v1's Generic_UNet weights under covlight UNet's names; the biases v1 lacks are 0. Every v1 weight is used
    exactly once, or the network is not the one assumed."""
    import torch

    n_stages, n_conv = len(kwargs["features_per_stage"]), kwargs["n_conv_per_stage"]
    pools = n_stages - 1
    pairs = []  # (covlight name, v1 name)
    for s in range(n_stages):
        for i, block in enumerate(_blocks(f"conv_blocks_context.{s}", n_conv, last_apart=s == pools)):
            pairs += [(f"encoder.{s}.{3 * i}.{p}", f"{block}.conv.{p}") for p in ("weight", "bias")]
            pairs += [(f"encoder.{s}.{3 * i + 1}.{p}", f"{block}.instnorm.{p}") for p in ("weight", "bias")]
    for u in range(pools):
        for i, block in enumerate(_blocks(f"conv_blocks_localization.{u}", n_conv, last_apart=True)):
            pairs += [(f"decoder.{u}.{3 * i}.{p}", f"{block}.conv.{p}") for p in ("weight", "bias")]
            pairs += [(f"decoder.{u}.{3 * i + 1}.{p}", f"{block}.instnorm.{p}") for p in ("weight", "bias")]
        pairs.append((f"upsample.{u}.weight", f"tu.{u}.weight"))
    pairs.append(("head.weight", f"seg_outputs.{pools - 1}.weight"))
    pairs += [(f"aux_heads.{j}.weight", f"seg_outputs.{pools - 2 - j}.weight") for j in range(pools - 1)]
    used = {v1 for _, v1 in pairs}
    missing = sorted(used - set(v1_state))
    unexpected = sorted(set(v1_state) - used)
    if missing or unexpected:
        raise DatasetError(f"{checkpoint_path}: its weights are not those of the Generic_UNet its plans describe "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the plans file belongs to another "
                           "model, or the trainer built another network")
    state = {name: v1_state[v1].detach().clone().float() for name, v1 in pairs}
    for name in [f"upsample.{u}.bias" for u in range(pools)] + ["head.bias"] + \
                [f"aux_heads.{j}.bias" for j in range(pools - 1)]:
        weight = state[name.replace("bias", "weight")]
        channels = weight.shape[1] if name.startswith("upsample") else weight.shape[0]
        state[name] = torch.zeros(channels)
    return state


# ------------------------------------------------------------------------------------------------- axes
def orientation_codes(value: str) -> tuple[str, str, str]:
    """Axis codes (nibabel's: the direction each voxel axis increases to, e.g. LPS) given as letters or read from a
    training image of the model."""
    path = Path(value)
    if path.is_file():
        import nibabel as nib

        return tuple(nib.aff2axcodes(nib.load(path).affine))
    codes = tuple(value.upper())
    if len(codes) != 3 or {frozenset("LR"), frozenset("AP"), frozenset("IS")} != {
            next(frozenset(pair) for pair in ("LR", "AP", "IS") if c in pair) for c in codes}:
        raise DatasetError(f"--orientation {value}: give three axis codes, one of L/R, A/P, I/S each (e.g. LPS), or "
                           "a training image of the model to read them from")
    return codes


def v1_axes(codes: Sequence[str], transpose_forward: Sequence[int]) -> tuple[list[int], list[bool]]:
    """For each axis of v1's array (SimpleITK's z, y, x of files with axis codes `codes`, then `transpose_forward`),
    the RAS+ axis of covlight's array it is and whether it runs the other way. Found by following a probe array
    through both readings."""
    import nibabel as nib

    shape = (2, 3, 5)
    ras = np.arange(np.prod(shape)).reshape(shape)
    to_file = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                              nib.orientations.axcodes2ornt(tuple(codes)))
    v1 = nib.orientations.apply_orientation(ras, to_file).transpose(2, 1, 0).transpose(list(transpose_forward))
    origin = np.unravel_index(v1.flat[0], shape)
    axes, flips = [], []
    for axis in range(3):
        ras_axis = shape.index(v1.shape[axis])
        step = [0, 0, 0]
        step[axis] = 1
        moved = np.unravel_index(v1[tuple(step)], shape)
        axes.append(ras_axis)
        flips.append(bool(moved[ras_axis] < origin[ras_axis]))
    return axes, flips


# ----------------------------------------------------------------------------------------------- labels
def _normalised(name: str) -> str:
    return " ".join(re.sub(r"[_\-]", " ", str(name)).lower().split())


def parse_labels(text: str) -> dict[int, str]:
    """`1=left_lung,2=right_lung` -> {1: "left_lung", 2: "right_lung"} (covlight structure names)."""
    labels = {}
    for item in text.split(","):
        index, _, structure = item.partition("=")
        if not index.strip().isdigit() or structure.strip() not in STRUCTURES:
            raise DatasetError(f"--labels {text}: give v1 class=structure pairs, e.g. 1=left_lung,2=right_lung,"
                               f"3=infection (structures: {', '.join(STRUCTURES)})")
        labels[int(index)] = structure.strip()
    return labels


def label_values(plans: Mapping, plans_path: Path, dataset_json: Path | None,
                 given: Mapping[int, str] | None) -> tuple[list[int], str]:
    """covlight's canonical value of each v1 class (index = class), and the subtask they make."""
    classes = [int(c) for c in plans.get("all_classes", [])]
    num_classes = int(plans["num_classes"])
    if sorted(classes) != list(range(1, num_classes + 1)):
        raise DatasetError(f"{plans_path}: classes {classes} are not 1..{num_classes}; covlight cannot tell which "
                           "output is which")
    if given:
        names, source = dict(given), "--labels"
    else:
        if dataset_json is None or not dataset_json.is_file():
            raise DatasetError(f"the class names of {plans_path} are in its task's dataset.json (nnUNet_raw_data/"
                               f"TaskXXX/dataset.json), {'not found at ' + str(dataset_json) if dataset_json else 'not given'}: "
                               "pass --dataset-json FILE, or --labels 1=left_lung,2=right_lung,3=infection")
        import json

        try:
            raw = json.loads(dataset_json.read_text(encoding="utf-8"))["labels"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{dataset_json}: no readable 'labels' ({type(error).__name__}); give the task's "
                               "dataset.json, or --labels") from None
        names, source = {}, str(dataset_json)
        for index in classes:
            name = _normalised(raw.get(str(index), ""))
            found = [s for s, spellings in LABEL_NAMES.items() if name in spellings]
            if not found:
                raise DatasetError(f"{dataset_json}: class {index} is {raw.get(str(index))!r}, which is none of "
                                   f"covlight's structures ({', '.join(STRUCTURES)}); a mask of both lungs in one "
                                   "class cannot be split into left and right. Give the mapping with --labels "
                                   "1=left_lung,... if you know it")
            names[index] = found[0]
    missing = [c for c in classes if c not in names]
    if missing or len(set(names.values())) != len(names):
        raise DatasetError(f"{source}: every class of {plans_path} ({classes}) needs its own structure, got {names}")
    values = [LABELS["background"]] + [STRUCTURES[names[c]].label for c in classes]
    structures = {names[c] for c in classes}
    subtask = next((s.name for s in SUBTASKS.values() if set(s.structures) == structures), None)
    if subtask is None:
        raise DatasetError(f"{source}: the classes of {plans_path} are {sorted(structures)}, which is no covlight "
                           f"subtask ({', '.join(f'{s.name}: {list(s.structures)}' for s in SUBTASKS.values())})")
    return values, subtask


# ------------------------------------------------------------------------------------------- intensities
def ct_normalisation(plans: Mapping, plans_path: Path) -> dict:
    """v1's CT rule's numbers from the plans (clip to the foreground percentiles, z-score with its mean and std)."""
    scheme = dict(plans.get("normalization_schemes", {})).get(0)
    if scheme != "CT":
        raise DatasetError(f"{plans_path}: normalisation {scheme!r}; covlight converts CT models (v1's 'CT' rule) "
                           "only")
    properties = plans["dataset_properties"]["intensityproperties"][0]
    return {"clip": [float(properties["percentile_00_5"]), float(properties["percentile_99_5"])],
            "mean": float(properties["mean"]), "std": float(properties["sd"])}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
