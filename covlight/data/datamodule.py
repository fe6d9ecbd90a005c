"""The TorchIO data module: patches for training, fixed patches for cheap validation, whole cases for testing.

Reads only canonical dataset folders `<root>/<dataset>/` (docs/ARCHITECTURE.md); which cases go where comes from a `Split`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
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
from covlight.data.interaction import SeedingStep
from covlight.data.options import (
    Augmentation,
    Cases,
    Interaction,
    Preprocessing,
    Sampling,
    Slices,
    SparseAnnotation,
    Unlabelled,
    Validation,
    as_options,
)
from covlight.data.patches import PatchStream, drawing_from, stream_seed
from covlight.data.resampling import resample_step, separate_axis
from covlight.data.sampling import ForegroundSampler
from covlight.data.sparse import SUBJECT_KEY, HideUnannotated, labelled_case_order, simulated_slices
from covlight.data.transforms import (
    CheckCase,
    ResizeSlice,
    ScaleIntensity,
    affine_range,
    augmentation_preset,
    class_indices,
    pad_to_at_least,
)
from covlight.data.unlabelled import (
    UnlabelledStream,
    pool_lists,
    unlabelled_batch_size,
)
from covlight.errors import ConfigError, DatasetError
from covlight.splits import Split


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
    # A partially annotated case (imported so, or under data.sparse_annotation): the axial slices that keep their
    # label (the other voxels are UNKNOWN_LABEL); None: fully annotated.
    annotated_slices: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.case_id}"


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
                        intensity_scaling: str = "range", histogram_landmarks: Sequence[float] | None = None,
                        resampling: str = "linear") -> list[tio.Transform]:
    """The deterministic image steps of every stage; `covlight.predict` applies the same to new scans (from the
    checkpoint's `PREPROCESSING_KEY` entry, which holds these five arguments).

    `target_spacing`: 3D models resample to it. `slice_size`: one-slice cases are resized to it (2D slice sets
    under data.slices.policy=resize). `histogram_landmarks`: the standard scale of
    data.preprocessing.histogram_standardisation. `resampling`: the rule of `covlight.data.resampling`.
    """
    steps: list[tio.Transform] = [CheckCase()]
    if histogram_landmarks is not None:
        steps.append(HistogramStandardisation(histogram_landmarks))
    steps.append(ScaleIntensity(intensity_scaling))
    if target_spacing is not None:
        steps.append(resample_step(resampling, target_spacing))
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
    """Whole preprocessed cases for testing, with what is needed to go back to the original grid.

    An item never holds the case's truth nor its path: scoring finds the label through the data module
    (`SegmentationDataModule.label_path`). With `seeding` (semi-automatic methods only), each item also holds the
    case's `Seeds`, the one view of its truth a method may have (covlight.data.interaction). `nearest_axis` gives,
    per case, the axis its probabilities return along with order 0 (`labels_on_grid`; None: linear throughout).
    """

    def __init__(self, records: list[CaseRecord], transform: tio.Transform, seeding: SeedingStep | None = None,
                 nearest_axis: Callable[[CaseRecord], int | None] | None = None):
        self.records = records
        self.transform = transform
        self.seeding = seeding
        self.nearest_axis = nearest_axis

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        subject = self.transform(tio.Subject(image=tio.ScalarImage(record.image_path, reader=read_canonical), intensity=record.intensity))
        item = {
            "image": subject["image"].data.float(),
            "affine": torch.as_tensor(subject["image"].affine),
            "intensity": record.intensity,
            "case_id": record.case_id,
            "dataset": record.dataset,
            "image_path": str(record.image_path),
            "original_shape": torch.tensor(record.shape),
            "nearest_axis": self.nearest_axis(record) if self.nearest_axis is not None else None,
            "annotated": list(record.annotated),
        }
        if self.seeding is not None:
            item["seeds"] = self.seeding(record.dataset, record.case_id, record.label_path, record.annotated)
        return item


def patch_quota(cases: int, total: int, per_case: int, generator: torch.Generator) -> list[int]:
    """Patches for each of `cases` cases: `total` in all (fewer when `per_case` each is fewer), as even as can be,
    the remainder to cases drawn at random."""
    total = min(total, per_case * cases)
    share, extra = divmod(total, cases)
    quota = [share] * cases
    for index in torch.randperm(cases, generator=generator)[:extra].tolist():
        quota[index] += 1
    return quota


def _first(batch: list[dict]) -> dict:
    return batch[0]


def epoch_to_resume(checkpoint: Mapping) -> int:
    """The epoch a run resumed from `checkpoint` runs first. Lightning's `current_epoch` counts completed epochs,
    and a checkpoint written at an epoch's end (covlight's last.ckpt) holds that epoch as processed but not yet
    completed: the next epoch is the number processed."""
    return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


def _single_threaded_worker(worker_id: int) -> None:
    """Loader workers use one thread each: several multi-threaded workers would fight the training step."""
    torch.set_num_threads(1)


class SegmentationDataModule(pl.LightningDataModule):
    """Augmented patches with foreground oversampling (PatchStream); 2D models use z-size-1 patches (slices).

    The options come in groups (`covlight.data.options`, documented in conf/data/default.yaml); each group may be
    given as its dataclass, as a mapping of its fields, or left out for its defaults.
    With `unlabelled`, each training batch is {"labelled": ..., "unlabelled": {"image", "dataset"}}: labelled
    patches and patches of an unlabelled pool that never holds a test case (see `covlight.data.unlabelled`).
    """

    def __init__(
        self,
        root: str,
        split: Split,
        label_values: Sequence[int],
        spatial_dims: int,
        patch_size: Sequence[int],
        batch_size: int,
        preprocessing: Preprocessing | Mapping | None = None,
        slices: Slices | Mapping | None = None,
        sampling: Sampling | Mapping | None = None,
        validation: Validation | Mapping | None = None,
        cases: Cases | Mapping | None = None,
        augmentation: Augmentation | Mapping | None = None,
        unlabelled: Unlabelled | Mapping | None = None,
        interaction: Interaction | Mapping | None = None,
        sparse_annotation: SparseAnnotation | Mapping | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        self.split = split
        self.label_values = list(label_values)
        self.patch_size = tuple(int(p) for p in patch_size)
        if spatial_dims not in (2, 3) or (spatial_dims == 2) != (self.patch_size[2] == 1):
            raise ConfigError(f"data.spatial_dims={spatial_dims} with patch size {list(self.patch_size)}: a 2D "
                             "model's patches have z-size 1, a 3D model's more")
        self.spatial_dims = spatial_dims
        self.batch_size = batch_size
        self.preprocessing_options = as_options(Preprocessing, preprocessing)
        self.slices = as_options(Slices, slices)
        self.sampling = as_options(Sampling, sampling)
        self.validation = as_options(Validation, validation)
        self.cases = as_options(Cases, cases)
        self.augmentation = as_options(Augmentation, augmentation)
        self.unlabelled = as_options(Unlabelled, unlabelled) if unlabelled is not None else None
        # Semi-automatic methods only (covlight.train checks): seeds from each test case's truth.
        self.seeding = (SeedingStep(as_options(Interaction, interaction), self.label_values)
                        if interaction is not None else None)
        self.sparse_annotation = as_options(SparseAnnotation, sparse_annotation)
        self.seed = int(seed)
        self._streams: list[PatchStream] = []  # the training loaders' streams, told each epoch's number
        self.epoch = 0  # the epoch the streams draw for (set_epoch)
        self.slice_size = None  # one-slice cases are resized to it (slices.policy=resize)
        if self.slices.policy == "resize":
            self.slice_size = tuple(int(n) for n in (self.slices.size or self.patch_size[:2]))
        # Learnt in setup from the training cases (and saved in checkpoints: preprocessing_state).
        self.target_spacing: tuple[float, ...] | None = None
        self.histogram_landmarks: list[float] | None = None
        self.records: dict[str, list[CaseRecord]] = {}
        self.labelled_records: list[CaseRecord] = []
        self._datasets: dict[str, CanonicalDataset] = {}  # dataset.json of each dataset, read once
        for warning in split.warnings:
            warnings.warn(warning, stacklevel=2)

    # ------------------------------------------------------------------------------------------ cases
    def _records(self, lists: dict[str, list[str]], what: str, need_labels: bool,
                 optional: Collection[str] = ()) -> list[CaseRecord]:
        """The cases of `lists` (dataset -> case ids); `what` names them in messages. A dataset in `optional` that
        is not imported is left out with a warning."""
        records = []
        for dataset_name, case_ids in lists.items():
            if dataset_name in optional and not (self.root / dataset_name / "dataset.json").is_file():
                warnings.warn(f"test set {dataset_name} is not imported under {self.root}: not tested on it "
                              f"(python -m covlight.prepare {dataset_name} ... adds it)", stacklevel=2)
                continue
            dataset = self._dataset(dataset_name)
            if self.cases.missing == "skip":
                present = [c for c in case_ids if c in dataset.cases]
                if len(present) < len(case_ids):
                    warnings.warn(f"{dataset.root}: {len(case_ids) - len(present)} of {len(case_ids)} cases of "
                                  f"{what} are not imported; using the {len(present)} present "
                                  "(data.cases.missing=skip)", stacklevel=2)
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
                    annotated_slices=dataset.annotated_slices(case_id) if has_label else None,
                ))
        return records

    def _annotation_budget(self, records: list[CaseRecord]) -> tuple[list[CaseRecord], list[CaseRecord]]:
        """`data.sparse_annotation` applied to the training cases: (the cases that keep a label, each with the
        axial slices it keeps; the cases left without one)."""
        budget = self.sparse_annotation
        rest: list[CaseRecord] = []
        if budget.cases is not None:
            if budget.cases > len(records):
                raise ConfigError(f"data.sparse_annotation.cases={budget.cases} exceeds the split's "
                                  f"{len(records)} training cases; use at most {len(records)}")
            order = labelled_case_order(len(records), budget.seed)
            kept = sorted(order[:budget.cases])
            rest = [records[i] for i in sorted(order[budget.cases:])]
            records = [records[i] for i in kept]
        if budget.slices_per_case is None:
            return records, rest
        simulated = []
        for record in tqdm(records, desc="sparse annotation", unit="case", leave=False, disable=None):
            slices = simulated_slices(record.label_path, self.label_values, budget, record.dataset, record.case_id,
                                      record.annotated_slices)
            full = record.annotated_slices is None and len(slices) == record.shape[2]
            simulated.append(record if full else replace(record, annotated_slices=slices))
        return simulated, rest

    def simulated_records(self) -> list[CaseRecord]:
        """The labelled training cases whose sparse annotation is simulated from a full label file (their full truth
        is known on every slice)."""
        return [r for r in self.labelled_records
                if r.annotated_slices is not None and self._dataset(r.dataset).annotated_slices(r.case_id) is None]

    def annotation_budget(self) -> dict:
        """What the training labels cost: labelled cases, annotated axial slices in all and per case (written to
        the run folder as annotation_budget.json; the efficiency curves read it)."""
        per_case = {r.key: len(r.annotated_slices) if r.annotated_slices is not None else r.shape[2]
                    for r in self.labelled_records}
        options = self.sparse_annotation
        return {"labelled_cases": len(per_case), "annotated_slices": int(sum(per_case.values())),
                "slices_per_case": options.slices_per_case, "cases": options.cases, "strategy": options.strategy,
                "seed": options.seed, "per_case": per_case}

    def _dataset(self, name: str) -> CanonicalDataset:
        if name not in self._datasets:
            self._datasets[name] = read_dataset(self.root / name)
        return self._datasets[name]

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        self.records["train"] = self._records(self.split.train, "the training split", need_labels=True)
        self.records["val"] = self._records(self.split.val, "the validation split", need_labels=True)
        self.records["test"] = self._records(self.split.test, "the test split", need_labels=True,
                                             optional=self.cases.optional_test_sets)
        if self.cases.test_in_domain:  # tasks 2 and 3: the held-out lists are scored too, as in-domain results
            self.records["test"] = self.records["val"] + self.records["test"]
        partial = [r for r in self.records["test"] if r.annotated_slices is not None]
        if partial:
            raise DatasetError(
                f"{partial[0].label_path}: case {partial[0].case_id} is partially annotated (dataset.json lists "
                f"its annotated slices) but the split makes it a test case ({len(partial)} such case(s)); a test "
                "case must be annotated in full. Put it among the training cases (a custom task's "
                "task.split_file), or import its full mask.")
        self.records["train"], rest = self._annotation_budget(self.records["train"])
        self.labelled_records = list(self.records["train"])  # inner validation cases are part of the budget too
        if self.unlabelled:
            rest = rest if self.sparse_annotation.rest_unlabelled else []  # training cases left without a label
            pool = (pool_lists(self.unlabelled.datasets, self.split, lambda name: self._dataset(name).cases)
                    if self.unlabelled.datasets or not rest else {})
            self.records["unlabelled"] = self._records(pool, "the unlabelled pool", need_labels=False) + rest
        inner = self.validation.inner_cases
        if inner and not self.records["val"]:
            if inner >= len(self.records["train"]):
                raise DatasetError(f"data.validation.inner_cases={inner} leaves no training case")
            self.records["val"] = self.records["train"][-inner:]
            self.records["train"] = self.records["train"][:-inner]
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
        option = self.preprocessing_options.target_spacing
        # 2D models work on native slices unless a spacing is given in numbers (converted nnU-Net 2d models: v1
        # resampled the volume before slicing it, and covlight.predict does the same from the checkpoint)
        if option != "native" and (self.spatial_dims == 3 or option not in (None, "auto")):
            if option in (None, "auto"):
                self.target_spacing = target_spacing_of([r.spacing for r in self.records["train"]])
            else:
                self.target_spacing = tuple(float(s) for s in option)
        if self.preprocessing_options.histogram_standardisation:
            self.histogram_landmarks = learn_standard_landmarks(
                read_canonical(r.image_path)[0] for r in tqdm(self.records["train"], desc="histogram landmarks",
                                                              unit="case", leave=False, disable=None))

    def preprocessing_state(self) -> dict:
        """The arguments of `image_preprocessing` this module uses, as plain values: saved in every checkpoint under
        `PREPROCESSING_KEY` (see `SupervisedSegmentation.on_save_checkpoint`), so `covlight.predict` resamples,
        resizes and scales new scans as the model's training scans."""
        return {"target_spacing": list(self.target_spacing) if self.target_spacing is not None else None,
                "slice_size": list(self.slice_size) if self.slice_size is not None else None,
                "intensity_scaling": self.preprocessing_options.intensity_scaling,
                "histogram_landmarks": self.histogram_landmarks,
                "resampling": self.preprocessing_options.resampling}

    # ------------------------------------------------------------------------------------- transforms
    def preprocessing(self, with_label: bool, pad: bool = False) -> tio.Compose:
        """Deterministic steps shared by training, validation and test (the test inverts the resampling).

        `with_label`: the label becomes class indices (a partially annotated case's unannotated voxels first become
        UNKNOWN_LABEL, on its own grid, and stay so). `pad`: the case is padded to at least the patch size, for
        patches to be drawn from it (whole test cases are not: the sliding window covers them).
        """
        steps = image_preprocessing(self.target_spacing, self.slice_size,
                                    self.preprocessing_options.intensity_scaling, self.histogram_landmarks,
                                    self.preprocessing_options.resampling)
        if with_label:
            steps.insert(1, HideUnannotated())  # after CheckCase, before any resampling
            steps += class_indices(self.label_values)
        if pad:
            steps.append(pad_to_at_least(self.patch_size))
        return tio.Compose(steps)

    def _patch_source(self, records: list[CaseRecord], labelled: bool = True) -> tio.SubjectsDataset:
        """Cases to draw patches from; unlabelled ones without their label (an unlabelled pool's labels, if
        present, are never read)."""
        subjects = []
        for record in records:
            subject = tio.Subject(image=tio.ScalarImage(record.image_path, reader=read_canonical),
                                  case_id=record.case_id, dataset=record.dataset, intensity=record.intensity)
            if labelled:
                subject.add_image(tio.LabelMap(record.label_path, reader=read_canonical), "label")
                if record.annotated_slices is not None:
                    subject[SUBJECT_KEY] = record.annotated_slices
            subjects.append(subject)
        return tio.SubjectsDataset(subjects, transform=self.preprocessing(with_label=labelled, pad=True))

    # ------------------------------------------------------------------------------------ dataloaders
    def _stream_loader(self, stream: PatchStream, batch_size: int) -> DataLoader:
        """Workers are kept from epoch to epoch and draw what (seed, rank, stream, epoch) says: the epoch reaches them
        through the stream's shared memory (PatchStream). The stream starts at the module's epoch: 0, or the epoch a
        resumed run starts with (set from its checkpoint before Lightning builds the loader, whose workers start
        drawing at once, before any epoch-start hook)."""
        stream.set_epoch(self.epoch)
        self._streams.append(stream)
        workers = self.sampling.num_workers
        return DataLoader(stream, batch_size=batch_size, num_workers=workers, worker_init_fn=_single_threaded_worker,
                          persistent_workers=workers > 0)

    def set_epoch(self, epoch: int) -> None:
        """Each epoch draws its own patches, the same in an uninterrupted and a resumed run (EpochSeeding)."""
        self.epoch = int(epoch)
        for stream in self._streams:
            stream.set_epoch(epoch)

    def _stream_seed(self, stream: int) -> int:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return stream_seed(self.seed, rank, stream)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        sampling = self.sampling
        augmentation = augmentation_preset(self.spatial_dims, self.augmentation, self.patch_size)
        affine = affine_range(self.spatial_dims, self.augmentation)  # patches come with what the affine reads
        self._streams = []
        stream = PatchStream(
            self._patch_source(self.records["train"]),
            sampler=ForegroundSampler(self.patch_size, sampling.foreground_fraction, affine=affine),
            samples_per_volume=sampling.samples_per_volume,
            patches_per_epoch=sampling.batches_per_epoch * self.batch_size,
            buffer_size=sampling.patch_buffer,
            augmentation=augmentation,
            groups=[r.dataset for r in self.records["train"]] if sampling.balanced else None,
            seed=self._stream_seed(0),
        )
        labelled = self._stream_loader(stream, self.batch_size)
        if not self.unlabelled:
            return labelled
        # As many batches per epoch as the labelled loader, `ratio` times its size, of patches drawn uniformly.
        batch_size = unlabelled_batch_size(self.unlabelled.ratio, self.batch_size)
        pool = UnlabelledStream(
            self._patch_source(self.records["unlabelled"], labelled=False),
            sampler=ForegroundSampler(self.patch_size, foreground_fraction=0.0, affine=affine),
            samples_per_volume=sampling.samples_per_volume,
            patches_per_epoch=sampling.batches_per_epoch * batch_size,
            buffer_size=sampling.patch_buffer,
            augmentation=augmentation,
            seed=self._stream_seed(1),
        )
        return CombinedLoader({"labelled": labelled, "unlabelled": self._stream_loader(pool, batch_size)},
                              mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        """`validation.patches` fixed patches (the same every epoch and run: drawn from a fixed seed), spread evenly
        over the validation cases, at most `validation.patches_per_case` each; only cases that get one are loaded."""
        records = self.records["val"] or self.records["train"]  # task 1: training cases (never test cases)
        generator = torch.Generator().manual_seed(1234)
        quota = patch_quota(len(records), self.validation.patches, self.validation.patches_per_case, generator)
        chosen = [(record, count) for record, count in zip(records, quota, strict=True) if count]
        dataset = self._patch_source([record for record, _ in chosen])
        sampler = ForegroundSampler(self.patch_size, foreground_fraction=0.5)
        patches = []
        with drawing_from(generator):
            for subject, (_, count) in zip(dataset, chosen, strict=True):
                for patch in sampler(subject, count):
                    patches.append({"image": patch["image"].data.float(), "label": patch["label"].data.long()})
        return DataLoader(PatchDataset(patches), batch_size=self.batch_size, shuffle=False, num_workers=0)

    def label_path(self, dataset: str, case_id: str) -> Path:
        """The truth of a case of this module's splits, for scoring (never part of a test batch)."""
        for record in self.records["test"] + self.records["val"] + self.records["train"]:
            if (record.dataset, record.case_id) == (dataset, case_id) and record.label_path is not None:
                return record.label_path
        raise KeyError(f"{dataset}/{case_id} is no labelled case of this data module")

    def whole_cases(self, records: list[CaseRecord], seeding: SeedingStep | None = None) -> WholeCaseDataset:
        """`records` preprocessed whole, each with the axis its probabilities return along (resampling rule)."""
        rule = self.preprocessing_options.resampling
        return WholeCaseDataset(records, self.preprocessing(with_label=False), seeding,
                                lambda record: separate_axis(rule, record.spacing, self.target_spacing))

    def test_dataloader(self) -> DataLoader:
        dataset = self.whole_cases(self.records["test"], self.seeding)
        return DataLoader(dataset, batch_size=1, collate_fn=_first, num_workers=min(self.sampling.num_workers, 1))
