"""Plain torch networks (no Lightning), each fully described by its constructor kwargs."""

from covlight.nets.nnunet_v1 import NNUNetV1UNet
from covlight.nets.unet import UNet, min_input_multiple

__all__ = ["NNUNetV1UNet", "UNet", "min_input_multiple"]
