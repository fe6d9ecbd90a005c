"""The data module's options, in groups: each dataclass is an argument of `SegmentationDataModule` and, registered
in Hydra's ConfigStore as `data_schema`, the schema of `conf/data` (types and defaults in one place: Hydra refuses
`data.sampling.batches_per_epoch=1.5` or an unknown key). `conf/data/default.yaml` documents each key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from covlight.errors import ConfigError

INTENSITY_SCALINGS = ("range", "zscore")
SLICE_POLICIES = ("pad", "resize")
RESAMPLINGS = ("linear", "nnunet_v1")  # the rules of covlight.data.resampling
MISSING_CASES = ("error", "skip")
INTERACTION_MODES = ("slices", "scribbles")
SPARSE_STRATEGIES = ("evenly", "random", "most_foreground")

# The checkpoint entry holding the data module's preprocessing (`SegmentationDataModule.preprocessing_state`):
# written with every checkpoint, read by `covlight.predict` to treat new scans as the model's training scans.
PREPROCESSING_KEY = "covlight_preprocessing"


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"data.{key}={value!r}: use one of {allowed}")


@dataclass
class Preprocessing:
    """Deterministic steps of every stage (and of `covlight.predict`)."""

    # 3D: "auto" (nnU-Net's rule over the training cases), [x, y, z] in mm, or "native" (each case at its own grid:
    # methods without a network, conf/model/none.yaml)
    target_spacing: Any = "auto"
    intensity_scaling: str = "range"
    histogram_standardisation: bool = False
    resampling: str = "linear"  # covlight.data.resampling.RESAMPLINGS

    def __post_init__(self):
        _one_of("preprocessing.intensity_scaling", self.intensity_scaling, INTENSITY_SCALINGS)
        _one_of("preprocessing.resampling", self.resampling, RESAMPLINGS)
        spacing = self.target_spacing
        if spacing not in (None, "auto", "native") and (isinstance(spacing, str) or not isinstance(spacing, Sequence)
                                                  or len(spacing) != 3):
            raise ConfigError(f"data.preprocessing.target_spacing={spacing!r}: use auto, native or three numbers "
                              "[x, y, z]")


@dataclass
class Slices:
    """2D slice sets (one-slice cases) of varying sizes."""

    policy: str = "pad"
    size: list[int] | None = None

    def __post_init__(self):
        _one_of("slices.policy", self.policy, SLICE_POLICIES)
        if self.size is not None and self.policy != "resize":
            raise ConfigError(f"data.slices.size={list(self.size)} applies to data.slices.policy=resize only (pad "
                             "keeps each slice's own size): add data.slices.policy=resize, or drop slices.size")


@dataclass
class Sampling:
    """How training patches are drawn and served."""

    foreground_fraction: float = 0.33
    batches_per_epoch: int = 250
    samples_per_volume: int = 16
    patch_buffer: int = 96
    num_workers: int = 2
    balanced: bool = False

    def __post_init__(self):
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ConfigError(f"data.sampling.foreground_fraction must be in [0, 1], got {self.foreground_fraction}")


@dataclass
class Validation:
    """Cheap validation: fixed patches, drawn once, `patches` in all spread over the cases (at most
    `patches_per_case` each)."""

    patches: int = 100
    patches_per_case: int = 4
    inner_cases: int = 0

    def __post_init__(self):
        if self.patches < 1 or self.patches_per_case < 1:
            raise ConfigError(f"data.validation.patches={self.patches} and patches_per_case="
                             f"{self.patches_per_case} must be at least 1")


@dataclass
class Cases:
    """What the module does with the split's case lists."""

    missing: str = "error"
    optional_test_sets: list[str] = field(default_factory=lambda: ["mosmed"])
    test_in_domain: bool = True

    def __post_init__(self):
        _one_of("cases.missing", self.missing, MISSING_CASES)


@dataclass
class Augmentation:
    """The arguments of `covlight.data.transforms.augmentation_preset` (besides the spatial dimensions)."""

    affine_probability: float = 0.2
    scales: list[float] = field(default_factory=lambda: [0.85, 1.25])
    degrees: float = 15.0
    gamma_probability: float = 0.3
    log_gamma: list[float] = field(default_factory=lambda: [-0.3, 0.3])
    noise_probability: float = 0.15
    noise_std: list[float] = field(default_factory=lambda: [0.0, 0.05])
    blur_probability: float = 0.2
    blur_std: list[float] = field(default_factory=lambda: [0.5, 1.0])
    low_resolution_probability: float = 0.15
    low_resolution_factor: list[float] = field(default_factory=lambda: [1.0, 2.0])
    flip_axes: list[int] = field(default_factory=list)
    rot90_probability: float = 0.0
    bias_field_probability: float = 0.0
    bias_field_coefficients: float = 0.2
    contrast_probability: float = 0.0
    contrast_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    histogram_probability: float = 0.0
    histogram_strength: float = 0.5


@dataclass
class Unlabelled:
    """The unlabelled pool of semi-supervised and domain-adaptation methods (see `covlight.data.unlabelled`)."""

    datasets: Any = field(default_factory=list)  # dataset names, or a mapping name -> "all" | [case ids]
    ratio: float = 1.0

    def __post_init__(self):
        if self.ratio <= 0:
            raise ConfigError(f"data.unlabelled.ratio must be > 0 (unlabelled patches per labelled patch), "
                             f"got {self.ratio}")


@dataclass
class Interaction:
    """Simulated interaction of semi-automatic methods (covlight.data.interaction): seeds drawn from each test
    case's own truth on `slices` axial slices, as full slices or scribbles, placed by `seed`."""

    slices: int = 3
    mode: str = "slices"
    seed: int = 0

    def __post_init__(self):
        _one_of("interaction.mode", self.mode, INTERACTION_MODES)
        if isinstance(self.slices, bool) or not isinstance(self.slices, int) or self.slices < 1:
            raise ConfigError(f"data.interaction.slices={self.slices!r}: give the number of seed slices per scan "
                              "(1 or more)")


@dataclass
class SparseAnnotation:
    """The annotation budget of the training cases, simulated from their full labels (covlight.data.sparse): only
    `cases` of the training cases keep a label (None: all), and of each only `slices_per_case` axial slices (None:
    all), chosen by `strategy` (evenly spaced through the structures' extent, random, or the slices with the most
    foreground) from `seed`; the other voxels become "not annotated". With `rest_unlabelled`, the training cases
    left without a label join the unlabelled pool of a semi-supervised method."""

    cases: int | None = None
    slices_per_case: int | None = None
    strategy: str = "evenly"
    seed: int = 0
    rest_unlabelled: bool = True

    def __post_init__(self):
        _one_of("sparse_annotation.strategy", self.strategy, SPARSE_STRATEGIES)
        for key in ("cases", "slices_per_case"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"data.sparse_annotation.{key}={value!r}: give a number of 1 or more, or null "
                                  "for all")


@dataclass
class DataConfig:
    """The schema of the whole `data` node. `_convert_: object` hands the groups to the module as dataclasses."""

    _target_: str = "covlight.data.datamodule.SegmentationDataModule"
    _convert_: str = "object"
    root: str = MISSING
    split: Any = MISSING
    label_values: list[int] = MISSING
    spatial_dims: int = MISSING
    patch_size: list[int] = MISSING
    batch_size: int = MISSING
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    slices: Slices = field(default_factory=Slices)
    sampling: Sampling = field(default_factory=Sampling)
    validation: Validation = field(default_factory=Validation)
    cases: Cases = field(default_factory=Cases)
    augmentation: Augmentation = field(default_factory=Augmentation)
    unlabelled: Unlabelled | None = None
    interaction: Interaction | None = None
    sparse_annotation: SparseAnnotation = field(default_factory=SparseAnnotation)
    seed: int = MISSING


def as_options(kind: type, value):
    """`value` as the dataclass `kind`: given as one, as a mapping of its fields (a config read back from a run's
    config.yaml), or None for the defaults."""
    if value is None:
        return kind()
    if isinstance(value, Mapping):
        return kind(**value)
    return value


ConfigStore.instance().store(group="data", name="data_schema", node=DataConfig)
