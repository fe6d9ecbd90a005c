"""The supervised LightningModule every method builds on: Dice + CE with deep supervision, nnU-Net's recipe.

Subclasses (few-shot, semi-supervised, domain adaptation) add only what they need: a teacher, a discriminator,
another loss term. The network is a plain `torch.nn.Module` from `covlight.nets`, given fully by its config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from covlight.benchmark import STRUCTURE_OF_VALUE, UNKNOWN_LABEL
from covlight.data.options import PREPROCESSING_KEY
from covlight.data.resampling import probabilities_on_grid
from covlight.inference import sliding_window_predict
from covlight.methods.losses import DiceCELoss, deep_supervision_loss

INFERENCE_KEYS = ("overlap", "mirror_axes", "batch_size", "gaussian_sigma_scale")


class SupervisedSegmentation(pl.LightningModule):
    """Train on patches (B, 1, X, Y, Z); a 2D net sees z-size-1 patches as (B, 1, X, Y).

    Args:
        net: the segmentation network (logits; a list of logits, highest resolution first, under deep supervision).
        optimizer: a partial taking the parameters (Hydra `_partial_: true`).
        scheduler: a partial taking the optimizer and `total_iters` (the run's optimizer steps), stepped every
            batch (nnU-Net's poly decay is torch's `PolynomialLR` with power 0.9); or None.
        loss: the loss on logits and class-index targets.
        spatial_dims: 2 for a net on single slices (patches (B, 1, X, Y)), 3 for a volumetric net; the config
            decides it once (`model.spatial_dims`).
        label_values: canonical label value of each output class (index = class).
        inference: sliding-window settings: patch_size, and any of INFERENCE_KEYS (`sliding_window_predict`'s
            arguments); an unknown key is an error, not silently ignored.
        channels_last: keep the network's weights and inputs channels-last (NHWC / NDHWC), which tensor cores
            prefer under mixed precision on a GPU.
        compile: `torch.compile` the network in place (`nn.Module.compile`, so checkpoint keys do not change):
            False, True, or a dict of `torch.compile` keyword arguments (e.g. {mode: max-autotune}).
    """

    def __init__(
        self,
        net: nn.Module,
        spatial_dims: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        loss: nn.Module | None = None,
        label_values: Sequence[int] = (0, 1, 2),
        inference: dict | None = None,
        channels_last: bool = False,
        compile: bool | Mapping = False,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss = loss if loss is not None else DiceCELoss()
        self.label_values = list(label_values)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.net_spatial_dims = spatial_dims
        inference = dict(inference or {})
        self.patch_size = tuple(int(p) for p in inference.pop("patch_size"))
        unknown = sorted(set(inference) - set(INFERENCE_KEYS))
        if unknown:
            raise ValueError(f"unknown inference setting(s) {', '.join(unknown)} (model.module.inference): "
                             f"use {', '.join(INFERENCE_KEYS)}")
        self.inference = inference
        self.register_buffer("class_to_label", torch.tensor(self.label_values, dtype=torch.uint8), persistent=False)
        self._val_counts: torch.Tensor | None = None
        self.channels_last = bool(channels_last)
        self.compile_options = dict(compile) if isinstance(compile, Mapping) else ({} if compile else None)
        self._net_configured = False

    def configure_model(self) -> None:
        """Lightning calls this before fit, test and predict: memory format and compilation of the network."""
        if self._net_configured:
            return
        self._net_configured = True
        if self.channels_last:
            self.net.to(memory_format=self.memory_format)
        if self.compile_options is not None:
            self.net.compile(**self.compile_options)

    @property
    def memory_format(self) -> torch.memory_format:
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last if self.net_spatial_dims == 2 else torch.channels_last_3d

    # ---------------------------------------------------------------------------------------- helpers
    def net_input(self, volume_patch: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) patches -> the net's input ((B, C, X, Y) for a 2D net)."""
        return volume_patch[..., 0] if self.net_spatial_dims == 2 else volume_patch

    def batch_tensors(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = batch["image"], batch["label"]
        image = image["data"] if isinstance(image, dict) else image
        label = label["data"] if isinstance(label, dict) else label
        image = self.net_input(image.float())
        if self.channels_last:
            image = image.contiguous(memory_format=self.memory_format)
        return image, self.net_input(label[:, 0].long()[:, None])[:, 0]

    def supervised_loss(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, (list, tuple)):
            return deep_supervision_loss(self.loss, outputs, target)
        return self.loss(outputs, target)

    # --------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, target = self.batch_tensors(batch)
        loss = self.supervised_loss(self.net(image), target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=image.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True,
                 batch_size=image.shape[0])
        return loss

    # ------------------------------------------------------------------------ validation (pseudo-Dice)
    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(3, len(self.label_values), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, target = self.batch_tensors(batch)
        logits = self.net(image)
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        self.log("val/loss", self.loss(logits, target), on_epoch=True, batch_size=image.shape[0], sync_dist=True)
        prediction = logits.argmax(1)
        known = target != UNKNOWN_LABEL  # sparse annotations: voxels nobody annotated are not counted
        for index in range(1, len(self.label_values)):
            predicted, actual = (prediction == index) & known, target == index
            self._val_counts[0, index] += (predicted & actual).sum()
            self._val_counts[1, index] += (predicted & ~actual).sum()
            self._val_counts[2, index] += (~predicted & actual).sum()

    def on_validation_epoch_end(self) -> None:
        counts = self._val_counts
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        tp, fp, fn = counts
        dice = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
        for index in range(1, len(self.label_values)):
            structure = STRUCTURE_OF_VALUE[self.label_values[index]]
            self.log(f"val/pseudo_dice/{structure}", dice[index].float())
        self.log("val/pseudo_dice", dice[1:].mean().float(), prog_bar=True)

    # ------------------------------------------------------------------------------------------ test
    @torch.no_grad()
    def predict_volume(self, image: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Class probabilities (K, X, Y, Z) of a preprocessed volume (C, X, Y, Z), on the image's device."""

        def network(patches: torch.Tensor) -> torch.Tensor:
            return self.net(patches.contiguous(memory_format=self.memory_format))

        return sliding_window_predict(
            network,
            image,
            patch_size=self.patch_size,
            net_spatial_dims=self.net_spatial_dims,
            progress=progress,
            **self.inference,
        )

    def labels_on_grid(self, probabilities: torch.Tensor, shape: Sequence[int],
                       nearest_axis: int | None = None) -> torch.Tensor:
        """Resample probabilities to the original grid (if the model worked at another spacing; order 0 along
        `nearest_axis`, see covlight.data.resampling), argmax, and map classes to canonical label values."""
        probabilities = probabilities_on_grid(probabilities, shape, nearest_axis)
        return self.class_to_label[probabilities.argmax(0)]

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        self.net.eval()
        probabilities = self.predict_volume(batch["image"].to(self.device))
        prediction = self.labels_on_grid(probabilities, batch["original_shape"].tolist(), batch.get("nearest_axis"))
        return {"prediction": prediction}

    # ------------------------------------------------------------------------------------ optimisation
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The data module's preprocessing goes with the weights, under one key whatever the data module's class:
        `covlight.predict` treats new scans as the training scans were."""
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            checkpoint[PREPROCESSING_KEY] = datamodule.preprocessing_state()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = self.scheduler_factory(optimizer, total_iters=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
