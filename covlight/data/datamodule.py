"""The TorchIO data module: patches for training, fixed patches for cheap validation, whole cases for testing.

Reads only canonical dataset folders `<root>/<dataset>/` (docs/ARCHITECTURE.md); which cases go where comes from a `Split`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torchio as tio
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from covlight.data.canonical import (
    CanonicalDataset,
    grid_difference,
    open_nifti,
    read_canonical,
    read_dataset,
    slice_spacing_note,
)
from covlight.data.histogram import HistogramStandardisation, learn_standard_landmarks
from covlight.data.patches import PatchStream
from covlight.data.sampling import ForegroundSampler
from covlight.data.splits import Split
from covlight.data.transforms import (
    SLICE_POLICIES,
    CheckCase,
    PadToAtLeast,
    ResizeSlice,
    ScaleIntensity,
    ToClassIndices,
    augmentation_preset,
)
from covlight.data.unlabelled import pool_lists, unlabelled_dataloader
from covlight.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class CaseRecord:
    """One case as the data module knows it (paths and geometry from dataset.json and the header)."""

    dataset: str
    case_id: str
    image_path: Path
    label_path: Path | None
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    intensity: str
    annotated: tuple[str, ...]


def target_spacing_of(spacings: Sequence[Sequence[float]], anisotropy_ratio: float = 3.0) -> tuple[float, ...]:
    """nnU-Net's rule: the median spacing; an axis much coarser than the others takes its 10th percentile."""
    spacings = np.asarray(spacings, dtype=float)
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = np.delete(target, worst)
    if target[worst] > anisotropy_ratio * others.max():
        target[worst] = np.percentile(spacings[:, worst], 10)
    return tuple(float(t) for t in target)


def image_preprocessing(target_spacing: Sequence[float] | None, slice_size: Sequence[int] | None = None,
                        intensity_scaling: str = "range",
                        histogram_landmarks: Sequence[float] | None = None) -> list[tio.Transform]:
    """The deterministic image steps of every stage; `covlight.predict` applies the same to new scans.

    `target_spacing`: 3D models resample to it. `slice_size`: one-slice cases are resized to it (2D slice sets
    under data.slice_policy=resize). `histogram_landmarks`: the standard scale of data.histogram_standardisation.
    """
    steps: list[tio.Transform] = [CheckCase()]
    if histogram_landmarks is not None:
        steps.append(HistogramStandardisation(histogram_landmarks))
    steps.append(ScaleIntensity(intensity_scaling))
    if target_spacing is not None:
        steps.append(tio.Resample(tuple(target_spacing)))
    if slice_size is not None:
        steps.append(ResizeSlice(slice_size))
    return steps


def check_geometry(record: CaseRecord) -> None:
    """Image and label must share one voxel grid; say which file, what differs and what to do when they do not."""
    image = open_nifti(record.image_path)
    if len(image.shape) != 3:
        raise DatasetError(f"{record.image_path}: expected a 3D volume, got shape {image.shape}. Re-import the case.")
    if record.label_path is None:
        return
    difference = grid_difference(image, open_nifti(record.label_path))
    if difference:
        raise DatasetError(
            f"{record.label_path}: {difference} ({record.image_path}). Image and label must share one grid; "
            "re-import the case."
        )


class PatchDataset(Dataset):
    """A fixed list of prepared patches (validation): no augmentation, same patches every epoch."""

    def __init__(self, patches: list[dict]):
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> dict:
        return self.patches[index]


class WholeCaseDataset(Dataset):
    """Whole preprocessed cases for testing, with what is needed to go back to the original grid."""

    def __init__(self, records: list[CaseRecord], transform: tio.Transform):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        subject = self.transform(tio.Subject(image=tio.ScalarImage(record.image_path, reader=read_canonical), intensity=record.intensity))
        return {
            "image": subject["image"].data.float(),
            "case_id": record.case_id,
            "dataset": record.dataset,
            "image_path": str(record.image_path),
            "label_path": str(record.label_path) if record.label_path else "",
            "original_shape": torch.tensor(record.shape),
            "annotated": list(record.annotated),
        }


def _first(batch: list[dict]) -> dict:
    return batch[0]


def _single_threaded_worker(worker_id: int) -> None:
    """Loader workers use one thread each: several multi-threaded workers would fight the training step."""
    torch.set_num_threads(1)


class SegmentationDataModule(pl.LightningDataModule):
    """Augmented patches with foreground oversampling (PatchStream); 2D models use z-size-1 patches (slices).

    With `unlabelled` (see `covlight.data.unlabelled`), each training batch is {"labelled": ..., "unlabelled":
    {"image", "dataset"}}: labelled patches and patches of an unlabelled pool that never holds a test case.
    """

    def __init__(
        self,
        root: str,
        split: Split,
        label_values: Sequence[int],
        patch_size: Sequence[int],
        batch_size: int,
        target_spacing: str | Sequence[float] | None = "auto",
        foreground_fraction: float = 0.33,
        batches_per_epoch: int = 250,
        samples_per_volume: int = 16,
        patch_buffer: int = 96,
        num_workers: int = 2,
        val_patches_per_case: int = 4,
        inner_validation: int = 0,
        missing_cases: str = "error",
        optional_test_sets: Sequence[str] = ("mosmed",),
        balanced_sampling: bool = False,
        test_in_domain: bool = True,
        intensity_scaling: str = "range",
        slice_policy: str = "pad",
        slice_size: Sequence[int] | None = None,
        histogram_standardisation: bool = False,
        augmentation: dict | None = None,
        unlabelled: dict | None = None,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        self.split = split
        self.label_values = list(label_values)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.spatial_dims = 2 if self.patch_size[2] == 1 else 3
        self.batch_size = batch_size
        self.target_spacing_option = target_spacing
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ConfigError(f"data.foreground_fraction={foreground_fraction}: give a fraction in [0, 1]")
        self.foreground_fraction = foreground_fraction
        self.batches_per_epoch = batches_per_epoch
        self.samples_per_volume = samples_per_volume
        self.patch_buffer = patch_buffer
        self.num_workers = num_workers
        self.val_patches_per_case = val_patches_per_case
        self.inner_validation = inner_validation
        if missing_cases not in ("error", "skip"):
            raise ConfigError(f"data.missing_cases={missing_cases!r}: use 'error' or 'skip'")
        self.missing_cases = missing_cases
        self.optional_test_sets = tuple(optional_test_sets)
        self.balanced_sampling = balanced_sampling
        self.test_in_domain = test_in_domain
        self.intensity_scaling = intensity_scaling
        if slice_policy not in SLICE_POLICIES:
            raise ConfigError(f"data.slice_policy={slice_policy!r}: use one of {SLICE_POLICIES}")
        if slice_size is not None and slice_policy != "resize":
            raise ConfigError(f"data.slice_size={list(slice_size)} applies to data.slice_policy=resize only "
                              "(pad keeps each slice's own size): add data.slice_policy=resize, or drop slice_size")
        self.slice_size = None  # one-slice cases are resized to it (slice_policy=resize)
        if slice_policy == "resize":
            self.slice_size = tuple(int(n) for n in (slice_size or self.patch_size[:2]))
        self.histogram_standardisation = histogram_standardisation
        self.histogram_landmarks: list[float] | None = None
        self.augmentation = dict(augmentation or {})
        self.unlabelled = dict(unlabelled) if unlabelled else None
        self.target_spacing: tuple[float, ...] | None = None
        self.records: dict[str, list[CaseRecord]] = {}
        self.val_monitors_training_cases = False
        for warning in split.warnings:
            warnings.warn(warning, stacklevel=2)

    # ------------------------------------------------------------------------------------------ cases
    def _records(self, lists: dict[str, list[str]], need_labels: bool, what: str) -> list[CaseRecord]:
        records = []
        for dataset_name, case_ids in lists.items():
            if what == "the test split" and dataset_name in self.optional_test_sets \
                    and not (self.root / dataset_name / "dataset.json").is_file():
                warnings.warn(f"test set {dataset_name} is not imported under {self.root}: not tested on it "
                              f"(python -m covlight.prepare {dataset_name} ... adds it)", stacklevel=2)
                continue
            dataset = self._dataset(dataset_name)
            if self.missing_cases == "skip":
                present = [c for c in case_ids if c in dataset.cases]
                if len(present) < len(case_ids):
                    warnings.warn(f"{dataset.root}: {len(case_ids) - len(present)} of {len(case_ids)} cases of "
                                  f"{what} are not imported; using the {len(present)} present "
                                  "(data.missing_cases=skip)", stacklevel=2)
                case_ids = present
            dataset.require(case_ids, what=f"{what} ({dataset_name})")
            for case_id in case_ids:
                entry = dataset.cases[case_id]
                has_label = dataset.has_label(case_id)
                if need_labels and not has_label:
                    raise DatasetError(f"{dataset.root}: case {case_id} in {what} has no label; import its mask.")
                records.append(CaseRecord(
                    dataset=dataset_name,
                    case_id=case_id,
                    image_path=dataset.image_path(case_id),
                    label_path=dataset.label_path(case_id) if has_label else None,
                    spacing=tuple(float(s) for s in entry["spacing"]),
                    shape=tuple(int(n) for n in entry["shape"]),
                    intensity=entry.get("intensity"),
                    annotated=tuple(dataset.annotated),
                ))
        return records

    def _dataset(self, name: str) -> CanonicalDataset:
        if not hasattr(self, "_datasets"):
            self._datasets: dict[str, CanonicalDataset] = {}
        if name not in self._datasets:
            self._datasets[name] = read_dataset(self.root / name)
        return self._datasets[name]

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        self.records["train"] = self._records(self.split.train, need_labels=True, what="the training split")
        self.records["val"] = self._records(self.split.val, need_labels=True, what="the validation split")
        self.records["test"] = self._records(self.split.test, need_labels=True, what="the test split")
        if self.test_in_domain:  # tasks 2 and 3: the held-out lists are scored too, as in-domain results
            self.records["test"] = self.records["val"] + self.records["test"]
        if self.unlabelled:
            pool = pool_lists(self.unlabelled, self.split, lambda name: self._dataset(name).cases)
            self.records["unlabelled"] = self._records(pool, need_labels=False, what="the unlabelled pool")
        if self.inner_validation and not self.records["val"]:
            if self.inner_validation >= len(self.records["train"]):
                raise DatasetError(f"data.inner_validation={self.inner_validation} leaves no training case")
            self.records["val"] = self.records["train"][-self.inner_validation:]
            self.records["train"] = self.records["train"][: -self.inner_validation]
        if not self.records["train"]:
            raise DatasetError("the split has no training cases; check task, source and fold")
        for record in self.records["train"] + self.records["val"] + self.records["test"]:
            check_geometry(record)
        for record in self.records.get("unlabelled", []):
            check_geometry(record)
        for name in sorted({r.dataset for r in self.records["test"] + self.records["val"]}):
            note = slice_spacing_note(self._dataset(name).meta)
            if note:
                warnings.warn(note, stacklevel=2)
        if self.spatial_dims == 3:
            option = self.target_spacing_option
            if option in (None, "auto"):
                self.target_spacing = target_spacing_of([r.spacing for r in self.records["train"]])
            else:
                self.target_spacing = tuple(float(s) for s in option)
        if self.histogram_standardisation:
            self.histogram_landmarks = learn_standard_landmarks(
                read_canonical(r.image_path)[0] for r in tqdm(self.records["train"], desc="histogram landmarks",
                                                              unit="case", leave=False, disable=None))
        self.val_monitors_training_cases = not self.records["val"]

    def state_dict(self) -> dict:
        """Saved in every checkpoint, so `covlight.predict` resamples new scans to the spacing the model saw."""
        return {"target_spacing": list(self.target_spacing) if self.target_spacing is not None else None,
                "slice_size": list(self.slice_size) if self.slice_size is not None else None,
                "intensity_scaling": self.intensity_scaling,
                "histogram_landmarks": self.histogram_landmarks}

    # ------------------------------------------------------------------------------------- transforms
    def preprocessing(self, with_label: bool) -> tio.Compose:
        """Deterministic steps shared by training, validation and test (the test inverts the resampling)."""
        steps = image_preprocessing(self.target_spacing, self.slice_size, self.intensity_scaling,
                                    self.histogram_landmarks)
        if with_label:
            steps.append(ToClassIndices(self.label_values))
            steps.append(PadToAtLeast(self.patch_size))
        return tio.Compose(steps)

    def _subject(self, record: CaseRecord) -> tio.Subject:
        subject = tio.Subject(
            image=tio.ScalarImage(record.image_path, reader=read_canonical),
            label=tio.LabelMap(record.label_path, reader=read_canonical),
            case_id=record.case_id,
            dataset=record.dataset,
            intensity=record.intensity,
        )
        return subject

    def _subjects_dataset(self, records: list[CaseRecord]) -> tio.SubjectsDataset:
        return tio.SubjectsDataset([self._subject(r) for r in records], transform=self.preprocessing(with_label=True))

    # ------------------------------------------------------------------------------------ dataloaders
    def train_dataloader(self) -> DataLoader | CombinedLoader:
        stream = PatchStream(
            self._subjects_dataset(self.records["train"]),
            sampler=ForegroundSampler(self.patch_size, self.foreground_fraction),
            samples_per_volume=self.samples_per_volume,
            patches_per_epoch=self.batches_per_epoch * self.batch_size,
            buffer_size=self.patch_buffer,
            augmentation=augmentation_preset(self.spatial_dims, **self.augmentation),
            groups=[r.dataset for r in self.records["train"]] if self.balanced_sampling else None,
        )
        # Workers start afresh each epoch, seeded from the epoch's seed (see callbacks/seeding.py).
        labelled = DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                              worker_init_fn=_single_threaded_worker)
        if not self.unlabelled:
            return labelled
        unlabelled = unlabelled_dataloader(self, augmentation_preset(self.spatial_dims, **self.augmentation),
                                           _single_threaded_worker)
        return CombinedLoader({"labelled": labelled, "unlabelled": unlabelled}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        records = self.records["val"] or self.records["train"]
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(1234)  # the same validation patches every epoch and every run
        try:
            dataset = self._subjects_dataset(records)
            sampler = ForegroundSampler(self.patch_size, foreground_fraction=0.5)
            patches = []
            for subject in dataset:
                for patch in sampler(subject, self.val_patches_per_case):
                    patches.append({"image": patch["image"].data.float(), "label": patch["label"].data.long()})
        finally:
            torch.random.set_rng_state(generator_state)
        return DataLoader(PatchDataset(patches), batch_size=self.batch_size, shuffle=False, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        records = self.records["test"]
        dataset = WholeCaseDataset(records, self.preprocessing(with_label=False))
        return DataLoader(dataset, batch_size=1, collate_fn=_first, num_workers=min(self.num_workers, 1))
