"""Self-supervised pre-training by restoring masked patches (in the spirit of Models Genesis' in-painting)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from covlight.methods.consistency import full_resolution
from covlight.methods.supervised import SupervisedSegmentation


def block_mask(shape: torch.Size, block_size: int, ratio: float, device=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A boolean mask (B, 1, *spatial) of cubes of `block_size` voxels, each masked with probability `ratio`."""
    batch, _, *spatial = shape
    mask = torch.rand(batch, 1, *(math.ceil(n / block_size) for n in spatial), device=device,
                      generator=generator) < ratio
    for axis, size in enumerate(spatial, start=2):
        mask = mask.repeat_interleave(block_size, dim=axis).narrow(axis, 0, size)
    return mask


class MaskedRestoration(SupervisedSegmentation):
    """Blocks of each patch are replaced by uniform noise; the net, followed by a 1x1 restoration head, restores
    the whole patch (mean squared error). No label is read: it learns from the unlabelled pool when
    `data.unlabelled` is set (as its model config does), otherwise from the labelled patches' images. Learning
    from the pool only, a pre-trained net has seen no image of any fold (task 1's training cases are other
    folds' test cases), so one pre-training serves every fold.

    The net keeps the segmentation architecture of its config (same classes), so `init_from=<this run>` starts
    any method of that architecture and subtask from it; the restoration head is not part of the net and stays
    behind. There is nothing to segment yet: validation reports the restoration loss (`val/loss`) and the model
    config skips the test.
    """

    def __init__(self, net: nn.Module, *, mask_ratio: float = 0.5, block_size: int = 8, **kwargs):
        super().__init__(net, **kwargs)
        if not 0.0 < mask_ratio < 1.0 or block_size < 1:
            raise ValueError(f"need 0 < mask_ratio < 1 and block_size >= 1, got {mask_ratio}, {block_size}")
        self.mask_ratio = mask_ratio
        self.block_size = block_size
        conv = nn.Conv2d if self.net_spatial_dims == 2 else nn.Conv3d
        self.restoration_head = conv(len(self.label_values), 1, kernel_size=1)

    def restoration_loss(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mask = block_mask(image.shape, self.block_size, self.mask_ratio, image.device, generator)
        noise = torch.rand(image.shape, device=image.device, generator=generator)
        restored = self.restoration_head(full_resolution(self.net(torch.where(mask, noise, image))))
        return F.mse_loss(restored, image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "unlabelled" in batch:
            image = self.net_input(batch["unlabelled"]["image"].float())
        else:
            image = self.batch_tensors(batch)[0]
        loss = self.restoration_loss(image)
        size = image.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image = self.batch_tensors(batch)[0]
        generator = torch.Generator(device=image.device).manual_seed(batch_idx)  # the same masks every epoch
        self.log("val/loss", self.restoration_loss(image, generator), on_epoch=True, batch_size=image.shape[0],
                 sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """No pseudo-Dice: the net segments nothing yet."""
