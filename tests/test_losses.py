"""covlight's Dice + cross-entropy with deep supervision is MONAI's DiceCELoss inside its DeepSupervisionLoss, with
the options that make them one definition (MONAI is a dev dependency)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss
from monai.losses import DiceCELoss as MonaiDiceCELoss

from covlight.methods.losses import DiceCELoss, deep_supervision_loss, deep_supervision_weights


def monai_equivalent(levels: int) -> DeepSupervisionLoss:
    """Softmax over the logits, one-hot targets, background left out of the Dice, Dice pooled over the batch
    ("batch Dice"), smoothing 1e-5 on both sides, Dice and CE weighted 1; deep supervision with nnU-Net's weights
    (1/2^i, the lowest resolution 0, normalised) and targets downsampled by plain nearest neighbour (MONAI's
    default is "nearest-exact", which picks the other voxel of each pair)."""
    dice_ce = MonaiDiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                              smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=1.0, lambda_ce=1.0)
    loss = DeepSupervisionLoss(dice_ce, weights=deep_supervision_weights(levels))
    loss.interp_mode = "nearest"
    return loss


@pytest.mark.parametrize(("spatial", "classes"), [((16, 12), 3), ((8, 8, 6), 4), ((16, 16), 2)])
def test_dice_ce_with_deep_supervision_equals_monai(spatial, classes):
    generator = torch.Generator().manual_seed(len(spatial) * 10 + classes)
    levels = 3
    outputs = [torch.randn(2, classes, *(s // 2**level for s in spatial), generator=generator)
               for level in range(levels)]
    target = torch.randint(0, classes, (2, *spatial), generator=generator)
    ours = deep_supervision_loss(DiceCELoss(), outputs, target)
    theirs = monai_equivalent(levels)(outputs, target[:, None].float())
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-6)
    single = DiceCELoss()(outputs[0], target)  # one output: the plain Dice + CE
    assert float(single) == pytest.approx(float(monai_equivalent(1).loss(outputs[0], target[:, None])), rel=1e-5)
