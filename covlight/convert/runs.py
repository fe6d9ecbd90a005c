"""A converted model written as a covlight run folder: what `covlight.predict`, `init_from=` and the report read.

    <out>/config.yaml                          the resolved config, as a training run writes it
    <out>/recipes/experiment/nnunet_v1.yaml    the same model as an `experiment=` recipe (`--config-dir
                                               <out>/recipes experiment=nnunet_v1`): test it on its task's cases,
                                               fine-tune it (init_from=<out>) like any covlight model
    <out>/checkpoints/last.ckpt                the weights under covlight's names, with the preprocessing that
                                               covlight.predict applies
    <out>/conversion.json                      provenance: source files and SHA-256, trainer, the plans' numbers
    <out>/status.json                          finished, with the run identity

A folder that exists and is not empty is refused; status.json is written last, so a folder that says finished
is whole.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import lightning
import torch
from omegaconf import OmegaConf, open_dict

from covlight.atomic import replacing, write_json, write_text
from covlight.benchmark import TASKS_WITH_FOLDS
from covlight.convert import nnunet_v1 as v1
from covlight.data.options import PREPROCESSING_KEY
from covlight.errors import ConfigError, DatasetError

EXPERIMENT = "nnunet_v1"
RECIPES = "recipes"
CONVERSION_FILE = "conversion.json"
CONVERSION_KEY = "covlight_conversion"
INFERENCE_BATCH = {2: 8, 3: 2}


def net_axes(model: v1.V1Model, codes) -> tuple[list[int], list[bool]]:
    """The covlight axis and direction of each of the net's spatial axes. A 2D model's slices are v1's first array
    axis, which must be covlight's z (axial slices) for covlight's 2D sliding window to feed it."""
    axes, flips = v1.v1_axes(codes, model.plans.get("transpose_forward") or [0, 1, 2])
    if model.spatial_dims == 3:
        return axes, flips
    if axes[0] != 2:
        raise DatasetError(f"{model.checkpoint_path}: this 2D model slices along covlight's axis {axes[0]} (not z) "
                           f"with training images oriented {''.join(codes)}; covlight's 2D models take axial "
                           "slices. Check --orientation")
    return axes[1:], flips[1:]


def intensity_note(clip) -> str:
    """Where covlight's input (the [-1250, 250] HU window) differs from v1's own preprocessing of a scan in HU."""
    low, high = v1.HU_WINDOW
    if low <= clip[0] and clip[1] <= high:
        return (f"identical: v1 clips to [{clip[0]:g}, {clip[1]:g}] HU, inside covlight's window [{low:g}, {high:g}]")
    return (f"differs: v1 clips to [{clip[0]:g}, {clip[1]:g}] HU, covlight's stored window is [{low:g}, {high:g}]; "
            f"HU between {max(high, clip[0]):g} and {clip[1]:g} (or {clip[0]:g} and {min(low, clip[1]):g}) reach "
            "the network as the window's edge")


def write_run(folder: Path, out: Path, task: str, source: str | None, codes, dataset_json: Path | None,
              labels: dict | None) -> Path:
    """Convert the v1 model in `folder` (one fold) to a finished covlight run folder `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; nothing is written over it. Give a new folder")
    model = v1.read_model(folder)
    fold_dir = v1.find_fold(folder)
    plans_path = fold_dir.parent / v1.PLANS
    values, subtask = v1.label_values(model.plans, plans_path, dataset_json, labels)
    kwargs = v1.unet_kwargs(model, len(values))
    state = v1.covlight_weights(model.state_dict, kwargs, model.checkpoint_path)
    order = [0] + [1 + i for i in sorted(range(len(values) - 1), key=lambda i: values[1 + i])]
    for name in [n for n in state if n.startswith(("head.", "aux_heads."))]:
        state[name] = state[name][order]  # v1's classes in covlight's canonical order
    axes, flips = net_axes(model, codes)
    full_axes, _ = v1.v1_axes(codes, model.plans.get("transpose_forward") or [0, 1, 2])
    stage = model.stage_plans
    dims = model.spatial_dims
    patch = [1, 1, 1]
    for net_axis, axis in enumerate(axes):
        patch[axis] = int(stage["patch_size"][net_axis])
    spacing = [0.0, 0.0, 0.0]
    for v1_axis, axis in enumerate(full_axes):
        spacing[axis] = float(stage["current_spacing"][v1_axis])
    normalisation = v1.ct_normalisation(model.plans, plans_path)
    fold_match = fold_dir.name.removeprefix("fold_")
    fold = int(fold_match) if fold_match.isdigit() and task in TASKS_WITH_FOLDS else None
    network = fold_dir.parent.parent.parent.name or f"{dims}d"
    name = f"{EXPERIMENT}_{network}"
    net = {"_target_": "covlight.nets.NNUNetV1UNet",
           **{k: v for k, v in kwargs.items() if k not in ("spatial_dims", "in_channels", "num_classes")},
           "axes": axes, "flips": flips, "window": list(v1.HU_WINDOW), **normalisation}
    recipe = {
        "defaults": [{"override /task": task}, {"override /source": source or "none"},
                     {"override /subtask": subtask}, {"override /model": f"unet{dims}d"}],
        "name": name,
        "fold": fold,
        "model": {"patch_size": patch, "module": {"net": net, "inference": {"batch_size": INFERENCE_BATCH[dims]}}},
        "data": {"preprocessing": {"target_spacing": spacing, "resampling": "nnunet_v1"}},
    }
    recipe_text = (f"# @package _global_\n# nnU-Net v1 model converted by covlight.convert from {fold_dir}\n"
                   f"# (provenance: ../../{CONVERSION_FILE}). Use: python -m covlight --config-dir "
                   f"{out / RECIPES} experiment={EXPERIMENT} ...\n" + OmegaConf.to_yaml(recipe))
    recipe_path = out / RECIPES / "experiment" / f"{EXPERIMENT}.yaml"
    write_text(recipe_path, recipe_text)
    config = compose_run_config(out)
    write_text(out / "config.yaml", OmegaConf.to_yaml(config))
    provenance = {
        "converted": _dt.datetime.now().isoformat(timespec="seconds"),
        "from": str(fold_dir.resolve()),
        "files": {str(p.name if p.parent == fold_dir else f"../{p.name}"): v1.sha256(p)
                  for p in (model.checkpoint_path, fold_dir / v1.INFO, plans_path)},
        "trainer": model.trainer, "stage": model.stage, "network": network,
        "v1_patch_size": [int(p) for p in stage["patch_size"]],
        "v1_target_spacing": [float(s) for s in stage["current_spacing"]],
        "transpose_forward": [int(a) for a in model.plans.get("transpose_forward") or [0, 1, 2]],
        "training_orientation": "".join(codes), "net_axes": axes, "net_flips": flips,
        "labels": {str(i): v for i, v in enumerate(values)}, "subtask": subtask,
        "ct_normalisation": normalisation, "intensity": intensity_note(normalisation["clip"]),
        "resampling": "nnunet_v1: v1's own rule (data.preprocessing.resampling; covlight.data.resampling)",
    }
    write_json(out / CONVERSION_FILE, provenance)
    checkpoint = {
        "state_dict": {f"net.{k}": v for k, v in state.items()},
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning.__version__,
        PREPROCESSING_KEY: {"target_spacing": spacing, "slice_size": None, "intensity_scaling": "range",
                            "histogram_landmarks": None, "resampling": "nnunet_v1"},
        CONVERSION_KEY: {"from": provenance["from"], "files": provenance["files"]},
    }
    with replacing(out / "checkpoints" / "last.ckpt") as temporary:
        torch.save(checkpoint, temporary)
    identity = {"name": name, "fold": fold, "seed": 0, "task": task, "variant": "official", "source": source,
                "subtask": subtask, "model": f"unet{dims}d"}
    write_json(out / "status.json", {"state": "finished", "updated": provenance["converted"], "identity": identity,
                                     "converted_from": provenance["from"]})
    return out


def compose_run_config(out: Path):
    """covlight's config with the converted recipe, resolved as a training run saves it (no `hydra` key)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from covlight.config import conf_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            config = compose(config_name="config", overrides=[
                f"hydra.searchpath=[file://{(out / RECIPES).resolve()}]", f"experiment={EXPERIMENT}",
                f"paths.output_dir={out.resolve()}"])
    finally:
        GlobalHydra.instance().clear()
    with open_dict(config):
        config.pop("hydra", None)
    return OmegaConf.create(OmegaConf.to_container(config, resolve=True))
