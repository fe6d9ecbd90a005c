"""covlight's UNet fed as nnU-Net v1 fed its Generic_UNet: a model trained by nnU-Net v1, run inside covlight.

nnU-Net v1 trains on arrays as SimpleITK reads them (axes z, y, x of the file's own voxel order, then permuted by
the plans' `transpose_forward`), normalised by its CT rule on Hounsfield units: clip to the training foreground's
0.5 and 99.5 percentiles, then subtract the foreground mean and divide by its std. covlight feeds a net its
stored 0..255 window ([-1250, 250] HU) scaled to 0..1, in RAS+ (x, y, z). This net takes covlight's input, returns
it to HU, applies v1's rule, permutes and flips the spatial axes into v1's order, runs the U-Net, and puts the
logits back in covlight's axes. Only HU outside the window differ from v1's own preprocessing (clipped to the
window first): none when the plans' percentiles lie inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from covlight.nets.unet import UNet


class NNUNetV1UNet(UNet):
    """`UNet(**unet)` behind nnU-Net v1's CT normalisation and axis order.

    axes: for each net spatial axis, the covlight axis it is (x 0, y 1, z 2; 2D nets: x 0, y 1).
    flips: for each net spatial axis, whether it runs opposite to covlight's (RAS+) direction.
    window: the HU range covlight's 0..1 input spans ([-1250, 250]).
    clip, mean, std: the plans' foreground percentiles 0.5 and 99.5, mean and std (HU).
    """

    def __init__(self, axes: Sequence[int], flips: Sequence[bool], window: Sequence[float],
                 clip: Sequence[float], mean: float, std: float, **unet):
        super().__init__(**unet)
        dims = self.spatial_dims
        if sorted(axes) != list(range(dims)) or len(flips) != dims:
            raise ValueError(f"axes must order 0..{dims - 1} and flips give one bool per axis, got {axes}, {flips}")
        if std <= 0 or clip[0] > clip[1]:
            raise ValueError(f"std must be > 0 and clip a range, got std {std}, clip {clip}")
        self.axes = [int(a) for a in axes]
        self.flips = [bool(f) for f in flips]
        self.window = (float(window[0]), float(window[1]))
        self.clip = (float(clip[0]), float(clip[1]))
        self.mean, self.std = float(mean), float(std)

    def to_net(self, x: Tensor) -> Tensor:
        """covlight's (N, 1, *spatial) 0..1 input as v1's network saw its input: normalised HU in v1's axes."""
        low, high = self.window
        hu = x * (high - low) + low
        x = (hu.clamp(self.clip[0], self.clip[1]) - self.mean) / self.std
        x = x.permute(0, 1, *(2 + a for a in self.axes))
        flipped = [2 + i for i, f in enumerate(self.flips) if f]
        return x.flip(flipped) if flipped else x

    def from_net(self, y: Tensor) -> Tensor:
        """v1-ordered logits back in covlight's axes."""
        flipped = [2 + i for i, f in enumerate(self.flips) if f]
        y = y.flip(flipped) if flipped else y
        inverse = [self.axes.index(a) for a in range(self.spatial_dims)]
        return y.permute(0, 1, *(2 + i for i in inverse))

    def encode(self, x: Tensor) -> list[Tensor]:
        return super().encode(self.to_net(x))

    def decode(self, skips: Sequence[Tensor]) -> Tensor | list[Tensor]:
        logits = super().decode(skips)
        if isinstance(logits, list):
            return [self.from_net(y) for y in logits]
        return self.from_net(logits)
