"""A 2D/3D U-Net in the style of nnU-Net's `PlainConvUNet`, in plain torch.

Every architectural choice is a constructor argument with JSON-able values, so a Hydra `_target_` config
describes the whole network (nnU-Net's plans map onto it one to one):

    _target_: covlight.nets.UNet
    spatial_dims: 3
    in_channels: 1
    num_classes: 4
    features_per_stage: [32, 64, 128, 256, 320]
    strides: [1, [1, 2, 2], 2, 2, 2]

A stage is `n` blocks of conv -> (channel dropout) -> norm -> LeakyReLU; the first conv of a stage carries the
stride. The decoder upsamples with a transposed conv (kernel = stride), concatenates the skip and runs a stage.
As in nnU-Net, convs have biases; unlike nnU-Net, the 1x1 heads of the lower resolutions exist only with deep
supervision (nnU-Net always builds them, which leaves unused parameters that DDP rejects). Weights trained with
deep supervision load into the same net without it by dropping the `aux_heads.*` keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

NORMS = ("instance", "batch")

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED_CONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
_NORM = {
    ("instance", 2): nn.InstanceNorm2d,
    ("instance", 3): nn.InstanceNorm3d,
    ("batch", 2): nn.BatchNorm2d,
    ("batch", 3): nn.BatchNorm3d,
}


def _per_axis(value, spatial_dims: int, what: str) -> tuple[int, ...]:
    """An int, or one int per spatial axis, as a tuple of positive ints."""
    if isinstance(value, int):
        values = (value,) * spatial_dims
    elif (
        isinstance(value, Sequence) and len(value) == spatial_dims and all(isinstance(v, int) for v in value)
    ):
        values = tuple(value)
    else:
        raise ValueError(f"{what} must be an int or a list of {spatial_dims} ints, got {value!r}")
    if any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive, got {value!r}")
    return values


def _per_stage(value, n: int, what: str) -> list:
    """A scalar repeated n times, or a list that must have exactly n entries."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries, expected {n} (one per stage)")
        return list(value)
    return [value] * n


def min_input_multiple(strides: Sequence[int | Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    """The product of all strides per axis: each input size must be a multiple of it."""
    per_stage = [_per_axis(s, spatial_dims, f"strides[{i}]") for i, s in enumerate(strides)]
    return tuple(math.prod(s[axis] for s in per_stage) for axis in range(spatial_dims))


class _StackedConvs(nn.Sequential):
    """`n` blocks of conv -> channel dropout -> norm -> LeakyReLU; only the first conv is strided."""

    def __init__(self, spatial_dims, n, in_ch, out_ch, kernel, stride, norm, dropout, negative_slope):
        layers = []
        for i in range(n):
            layers.append(
                _CONV[spatial_dims](
                    in_ch if i == 0 else out_ch,
                    out_ch,
                    kernel,
                    stride=stride if i == 0 else 1,
                    padding=[(k - 1) // 2 for k in kernel],
                    bias=True,
                )
            )
            if dropout > 0:
                layers.append(_DROPOUT[spatial_dims](dropout))
            layers.append(_NORM[norm, spatial_dims](out_ch, eps=1e-5, affine=True))
            layers.append(nn.LeakyReLU(negative_slope, inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """nnU-Net-style plain-conv U-Net for 2D or 3D inputs of shape (N, in_channels, *spatial).

    `forward` returns logits (N, num_classes, *spatial). With `deep_supervision`, a module in training mode
    returns a list of logits from the highest resolution (the input's) to the lowest (len = stages - 1); in eval
    mode it returns only the full-resolution tensor, as nnU-Net does at inference.

    `encode(x)` returns the output of every encoder stage (the last is the bottleneck) and `decode(skips)`
    turns them into logits; `forward(x) == decode(encode(x))`, so methods can hook encoder features.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        features_per_stage: Sequence[int],
        strides: Sequence[int | Sequence[int]],
        kernel_sizes: Sequence[int | Sequence[int]] | int = 3,
        decoder_kernel_sizes: Sequence[int | Sequence[int]] | None = None,
        n_conv_per_stage: int | Sequence[int] = 2,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
        norm: str = "instance",
        dropout: float = 0.0,
        negative_slope: float = 0.01,
        deep_supervision: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        features = list(features_per_stage)
        n_stages = len(features)
        if n_stages < 2 or any(not isinstance(f, int) or f < 1 for f in features):
            raise ValueError(f"features_per_stage must list >= 2 positive ints, got {features_per_stage!r}")
        strides = [
            _per_axis(s, spatial_dims, f"strides[{i}]")
            for i, s in enumerate(_per_stage(strides, n_stages, "strides"))
        ]
        if any(s != 1 for s in strides[0]):
            raise ValueError(
                f"strides[0] must be 1: the first stage keeps the input resolution, got {strides[0]}"
            )
        kernels = [
            _per_axis(k, spatial_dims, f"kernel_sizes[{i}]")
            for i, k in enumerate(_per_stage(kernel_sizes, n_stages, "kernel_sizes"))
        ]
        # Decoder stage s (deepest first) runs at encoder stage n-2-s's resolution and, by default, its kernel;
        # nnU-Net v1's Generic_UNet uses the kernel of the stage below instead (covlight/convert/nnunet_v1.py).
        decoder_kernels = [
            _per_axis(k, spatial_dims, f"decoder_kernel_sizes[{i}]")
            for i, k in enumerate(_per_stage(decoder_kernel_sizes, n_stages - 1, "decoder_kernel_sizes"))
        ] if decoder_kernel_sizes is not None else [kernels[-2 - s] for s in range(n_stages - 1)]
        if any(k % 2 == 0 for kernel in kernels + decoder_kernels for k in kernel):
            raise ValueError(f"kernel sizes must be odd (same padding), got {kernel_sizes!r}, {decoder_kernel_sizes!r}")
        n_conv = _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")
        n_conv_dec = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        if any(not isinstance(n, int) or n < 1 for n in n_conv + n_conv_dec):
            raise ValueError("n_conv_per_stage and n_conv_per_stage_decoder must be ints >= 1")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

        self.spatial_dims = spatial_dims
        self.strides = strides
        self.deep_supervision = deep_supervision
        block = dict(spatial_dims=spatial_dims, norm=norm, dropout=dropout, negative_slope=negative_slope)

        self.encoder = nn.ModuleList()
        channels = in_channels
        for s in range(n_stages):
            self.encoder.append(
                _StackedConvs(
                    n=n_conv[s],
                    in_ch=channels,
                    out_ch=features[s],
                    kernel=kernels[s],
                    stride=strides[s],
                    **block,
                )
            )
            channels = features[s]

        # Decoder stage s goes from encoder stage n-1-s up to encoder stage n-2-s; the last is at full resolution.
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for s in range(n_stages - 1):
            below, skip = features[-1 - s], features[-2 - s]
            stride = strides[-1 - s]
            self.upsample.append(
                _TRANSPOSED_CONV[spatial_dims](below, skip, stride, stride=stride, bias=True)
            )
            self.decoder.append(
                _StackedConvs(
                    n=n_conv_dec[s], in_ch=2 * skip, out_ch=skip, kernel=decoder_kernels[s], stride=1, **block
                )
            )
        self.head = _CONV[spatial_dims](features[0], num_classes, 1, bias=True)
        # Heads at 1/2, 1/4, ... resolution exist only with deep supervision: unused parameters would break DDP.
        self.aux_heads = nn.ModuleList(
            _CONV[spatial_dims](f, num_classes, 1, bias=True)
            for f in (features[1:-1] if deep_supervision else [])
        )

        self.apply(lambda m: _init_he(m, negative_slope))

    def min_input_multiple(self) -> tuple[int, ...]:
        """The product of strides per axis: each input size must be a multiple of it."""
        return min_input_multiple(self.strides, self.spatial_dims)

    def encode(self, x: Tensor) -> list[Tensor]:
        multiple = self.min_input_multiple()
        if x.ndim != self.spatial_dims + 2 or any(n % m for n, m in zip(x.shape[2:], multiple, strict=True)):
            raise ValueError(
                f"input of shape {tuple(x.shape)}: expected (N, C, *spatial) with {self.spatial_dims} spatial "
                f"sizes, each a multiple of {multiple}"
            )
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return skips

    def decode(self, skips: Sequence[Tensor]) -> Tensor | list[Tensor]:
        every_scale = self.deep_supervision and self.training
        x = skips[-1]
        decoded = []
        for s, (up, stage) in enumerate(zip(self.upsample, self.decoder, strict=True)):
            x = stage(torch.cat((up(x), skips[-2 - s]), dim=1))
            if every_scale:
                decoded.append(x)
        logits = self.head(x)
        if not every_scale:
            return logits
        return [logits] + [head(f) for head, f in zip(self.aux_heads, decoded[-2::-1], strict=True)]

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        return self.decode(self.encode(x))


def _init_he(module: nn.Module, negative_slope: float) -> None:
    """nnU-Net's `InitWeights_He`: Kaiming-normal conv weights (a = LeakyReLU slope), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=negative_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
