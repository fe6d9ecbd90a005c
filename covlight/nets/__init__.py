"""Plain torch networks (no Lightning), each fully described by its constructor kwargs."""

from covlight.nets.unet import UNet, min_input_multiple

__all__ = ["UNet", "min_input_multiple"]
