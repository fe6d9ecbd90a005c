"""`python -m covlight.predict`: a trained run applied to new scans or slices.

    python -m covlight.predict --run RUN_DIR --input PATH --output DIR
    python -m covlight.predict --run RUN_A --run RUN_B ... --input PATH --output DIR
    python -m covlight.predict --runs 'outputs/my_ct/infection/slices2d/fold*-seed0/*' --input PATH --output DIR
    python -m covlight.predict --ckpt FILE [--config CONFIG.yaml] --input PATH --output DIR

The model is built from the run's saved config (`config.yaml`; `model.module` is instantiated, so a run folder is
trusted like code) and loads the checkpoint its test used (`checkpoints/last.ckpt`) with `weights_only=True`.
Each input goes through the training preprocessing: RAS+ orientation, the stored 0..255 range by its intensity
kind, scaled as the run scaled it (`data.preprocessing.intensity_scaling`), for 3D models resampled to the target spacing the
checkpoint records, for 2D slices resized as in training (`data.slices.policy=resize`); then the
Gaussian sliding window of the run's test (`--mirror` adds test-time mirroring), and the prediction goes back
to the input's own grid: `<name>.nii.gz` for volumes (the input's affine and header), `<name>.png` for slices
(the input picture's size). `--probabilities` also writes `probabilities/<name>_<structure>.nii.gz` (`.npy`
for slices), float32 softmax probabilities on the same grid.

Intensity kinds are declared, never guessed: `--intensity` for all inputs, else `hu` for volumes and `8bit`
for slices (said at start, and checked: an HU scan must hold air near -1000 HU). A canonical dataset folder's
images are stored 0..255 already, and `--intensity` does not apply to them.

Several runs (`--run` repeated, and/or `--runs` with a glob pattern, quoted so the shell leaves it alone) predict
as an ensemble, as nnU-Net predicts with its 5 fold models: the class probabilities of every run are averaged,
and the labels (and with `--probabilities` the maps) come from the mean. The runs must predict the same structures
with the same preprocessing; otherwise nothing is predicted and the error names two runs and what differs.

`--postprocess largest_component[:structure,...]` keeps only the largest connected component of each named
structure (default: each lung the model predicts; nnU-Net v1's connectivity), `--postprocess FILE` the structures
a `postprocessing.json` chose on validation cases (`python -m covlight.postprocess`); probability maps are left as
predicted.

Exit status: 0 when every input was predicted, 1 when an input failed, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import glob
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from covlight.benchmark import LABELS, STRUCTURE_OF_VALUE, STRUCTURES
from covlight.callbacks.checkpoint import load_checkpoint
from covlight.config import read_status
from covlight.data.canonical import INTENSITY_KINDS
from covlight.data.datamodule import image_preprocessing
from covlight.data.options import PREPROCESSING_KEY
from covlight.data.resampling import probabilities_on_grid, separate_axis
from covlight.errors import WORK_FAILED, CovlightError, DatasetError, report_error
from covlight.methods.supervised import SupervisedSegmentation
from covlight.postprocess import largest_component, parse_spec
from covlight.scans import (
    Scan,
    Source,
    find_sources,
    label_suffix,
    probability_suffix,
    read_scan,
    write_output,
)

DEFAULT_INTENSITY = {"volume": "hu", "dicom": "hu", "slice": "8bit"}
LUNG_VALUES = {LABELS["left_lung"], LABELS["right_lung"]}


@dataclass
class Model:
    module: SupervisedSegmentation
    target_spacing: tuple[float, ...] | None  # 3D models: the spacing they were trained at
    device: torch.device
    slice_size: tuple[int, ...] | None = None  # 2D slices are resized to it (data.slices.policy=resize)
    intensity_scaling: str = "range"  # data.preprocessing.intensity_scaling of the run
    histogram_landmarks: list[float] | None = None  # data.preprocessing.histogram_standardisation: the learnt scale
    source: Path | None = None  # the run folder (or checkpoint) it was loaded from
    resampling: str = "linear"  # data.preprocessing.resampling (covlight.data.resampling)

    def nearest_axis(self, scan: Scan) -> int | None:
        """The axis of `scan` along which probabilities return to its grid with order 0 (resampling rule)."""
        return separate_axis(self.resampling, nib.affines.voxel_sizes(scan.affine), self.target_spacing)

    @property
    def structures(self) -> list[str]:
        """The structure of each class but the background, in class order."""
        return [STRUCTURE_OF_VALUE[value] for value in self.module.label_values[1:]]

    def sharing(self) -> dict[str, object]:
        """What every member of an ensemble must share: what it predicts and how its inputs are prepared."""
        return {"structures": self.structures, "spatial dimensions": self.module.net_spatial_dims,
                "target spacing": self.target_spacing, "slice size": self.slice_size,
                "intensity scaling": self.intensity_scaling, "histogram landmarks": self.histogram_landmarks,
                "resampling": self.resampling}


def check_ensemble(models: list[Model]) -> None:
    """One clear error naming two runs and what differs when the runs of an ensemble cannot be averaged."""
    first = models[0]
    for other in models[1:]:
        for what, value in first.sharing().items():
            theirs = other.sharing()[what]
            if theirs != value:
                raise CovlightError(f"--run {first.source} and --run {other.source} differ in their {what} "
                                    f"({value} vs {theirs}); an ensemble averages runs that predict the same "
                                    "structures with the same preprocessing: leave one of them out")


@dataclass
class Job:
    source: Source
    labels: Path
    probabilities: dict[str, Path]  # structure -> file; empty without --probabilities


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    try:
        models = [load_model(args, config, checkpoint, source) for config, checkpoint, source in run_files(args)]
        check_ensemble(models)
        jobs = plan(args, models[0])
        args.keep_largest = [STRUCTURES[s].label for s in parse_spec(args.postprocess, models[0].structures)] \
            if args.postprocess else []
    except CovlightError as error:
        return report_error("covlight.predict", error)
    describe(args, models, jobs, console)
    done, failures = predict_all(jobs, models, args, console)
    console.print(f"wrote {done} prediction(s) to {args.output}")
    if failures:
        console.print(f"[red]{len(failures)} input(s) failed, nothing written for them:[/red]")
        for message in failures:
            console.print(f"  {message}")
        if not args.keep_going:
            console.print("Stopped at the first failure (--keep-going predicts the other inputs).")
        return WORK_FAILED
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m covlight.predict",
                                     description="Apply a trained run to new scans or slices.")
    parser.add_argument("--run", type=Path, action="append", default=[],
                        help="a finished run folder (config.yaml, checkpoints/last.ckpt); repeat it to predict with "
                             "the ensemble of the runs (mean class probabilities)")
    parser.add_argument("--runs", action="append", default=[],
                        help="a glob pattern of run folders (quoted), e.g. 'outputs/.../fold*-seed0/*': every "
                             "match joins the ensemble")
    parser.add_argument("--ckpt", type=Path, help="a checkpoint file (its run's config.yaml is found beside "
                                                  "checkpoints/, or give --config)")
    parser.add_argument("--config", type=Path, help="with --ckpt: the run's resolved config.yaml")
    parser.add_argument("--input", type=Path, required=True,
                        help="an image file (NIfTI, NRRD, MHA/MHD, PNG/JPG), a DICOM series folder, a canonical "
                             "dataset folder, or a folder of these")
    parser.add_argument("--output", type=Path, required=True, help="folder for the predictions (not inside --input)")
    parser.add_argument("--intensity", choices=INTENSITY_KINDS,
                        help="what the input values are (default: hu for volumes, 8bit for slices)")
    parser.add_argument("--mirror", action="store_true",
                        help="test-time mirroring (never across the left-right axis for a model of the lungs)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write per-structure probability maps under OUTPUT/probabilities/")
    parser.add_argument("--label-format", choices=("canonical", "benchmark"), default="canonical",
                        help="canonical: 1 left lung, 2 right lung, 3 infection; benchmark: as the benchmark's "
                             "files (an infection-only model writes infection as 1) (default: %(default)s)")
    parser.add_argument("--postprocess", metavar="RULE",
                        help="largest_component[:structure,...] (default structures: the lungs), or a "
                             "postprocessing.json chosen on validation cases (python -m covlight.postprocess)")
    parser.add_argument("--keep-going", action="store_true",
                        help="predict the other inputs when one fails, list the failures, exit 1")
    parser.add_argument("--overwrite", action="store_true", help="replace prediction files that exist")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    if bool(args.ckpt) == bool(args.run or args.runs):
        parser.error("give --run (or --runs), or --ckpt")
    if args.config and not args.ckpt:
        parser.error("--config goes with --ckpt (a run folder has its own config.yaml)")
    return args


# ------------------------------------------------------------------------------------------------------ model
def load_model(args, config_path: Path, checkpoint_path: Path, source: Path) -> Model:
    try:
        config = OmegaConf.load(config_path)
        module = instantiate(config.model.module)
    except Exception as error:  # YAML, missing keys, a target that cannot be built
        raise CovlightError(f"cannot build the model from {config_path} ({type(error).__name__}: {error})") from None
    if not isinstance(module, SupervisedSegmentation):
        raise CovlightError(f"{config_path}: model.module is a {type(module).__name__}, not a SupervisedSegmentation")
    checkpoint = load_checkpoint(checkpoint_path)  # a damaged file or not a checkpoint: one clear error
    try:
        module.load_state_dict(checkpoint.get("state_dict", checkpoint))
    except Exception as error:  # weights of another model
        raise CovlightError(f"cannot load {checkpoint_path} into the model of {config_path} "
                            f"({type(error).__name__}: {error})") from None
    data_state = checkpoint.get(PREPROCESSING_KEY)
    if data_state is None:
        raise CovlightError(f"{checkpoint_path} does not record its preprocessing (no '{PREPROCESSING_KEY}' entry: "
                            "written by an older covlight, or trained without covlight's data module); use a "
                            "checkpoint written by a current covlight run")
    spacing = data_state["target_spacing"]
    if module.net_spatial_dims == 3 and spacing is None:
        raise CovlightError(f"{checkpoint_path} does not record the spacing its 3D model was trained at; use a "
                            "checkpoint written by a current covlight run")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CovlightError("--device cuda, but torch sees no CUDA device")
    if args.mirror:
        module.inference["mirror_axes"] = mirror_axes(module)
    module.eval().to(device)
    slice_size = data_state["slice_size"]
    return Model(module, tuple(float(s) for s in spacing) if spacing is not None else None, device,
                 tuple(int(n) for n in slice_size) if slice_size else None,
                 data_state["intensity_scaling"], data_state["histogram_landmarks"], source,
                 data_state.get("resampling", "linear"))  # runs from before the key resample linearly


def run_folders(args) -> list[Path]:
    """The --run folders, then each --runs pattern's matches (sorted); each folder once."""
    folders = list(args.run)
    for pattern in args.runs:
        matches = sorted(Path(match) for match in glob.glob(pattern) if Path(match).is_dir())
        if not matches:
            raise CovlightError(f"--runs {pattern!r} matches no run folder; check the pattern (quote it, so that "
                                "the shell does not expand it)")
        folders += matches
    return list(dict.fromkeys(folders))


def run_files(args) -> list[tuple[Path, Path, Path]]:
    """(config, checkpoint, source) of each model to load, checked to exist (and each run to be finished)."""
    if args.ckpt:
        files = [(args.config or args.ckpt.parent.parent / "config.yaml", args.ckpt, args.ckpt)]
    else:
        files = []
        for run in run_folders(args):
            state = read_status(run).get("state")
            if state != "finished":
                raise CovlightError(f"{run} is not a finished run (status: {state or 'no status.json'}); its "
                                    f"checkpoint may be partial. To use it anyway: --ckpt {run / 'checkpoints'}"
                                    "/last.ckpt")
            files.append((run / "config.yaml", run / "checkpoints" / "last.ckpt", run))
    for config, checkpoint, _ in files:
        for path, what in ((checkpoint, "checkpoint"), (config, "run config (give --config)")):
            if not path.is_file():
                raise CovlightError(f"{path}: no such {what}")
    return files


def mirror_axes(module: SupervisedSegmentation) -> tuple[int, ...]:
    """Every axis the net sees, but the left-right one (RAS+ x) for a model of the lungs: mirrored there, a left
    lung looks like a right one."""
    axes = range(module.net_spatial_dims)
    return tuple(a for a in axes if not (a == 0 and LUNG_VALUES & set(module.label_values)))


# ----------------------------------------------------------------------------------------------------- inputs
def plan(args, model: Model) -> list[Job]:
    """One job per input, checked before anything runs: never into the input folder, never over a file."""
    if not args.input.exists():
        raise CovlightError(f"--input {args.input} does not exist")
    inputs = args.input.resolve()
    output = args.output.resolve()
    if (output == inputs or inputs in output.parents) if inputs.is_dir() else output == inputs.parent:
        raise CovlightError(f"--output {args.output} is inside the input folder; predictions never go there. "
                            "Choose another folder.")
    sources = find_sources(args.input)
    if not sources:
        raise CovlightError(f"no inputs in {args.input}")
    if args.intensity and any(s.kind == "stored" for s in sources):
        raise CovlightError(f"{args.input} is a canonical dataset folder: its images are stored 0..255 already "
                            "(their kind is in dataset.json); drop --intensity")
    jobs = []
    for source in sources:
        probabilities = {s: args.output / "probabilities" / f"{source.name}_{s}{probability_suffix(source)}"
                         for s in model.structures} if args.probabilities else {}
        jobs.append(Job(source, args.output / f"{source.name}{label_suffix(source)}", probabilities))
    targets = [path for job in jobs for path in (job.labels, *job.probabilities.values())]
    clashes = sorted({str(path) for path in targets if targets.count(path) > 1})
    if clashes:
        raise CovlightError(f"several inputs would write {clashes[0]} (inputs differing only in their suffix); "
                            "predict them into separate folders")
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.overwrite:
        raise CovlightError(f"{len(existing)} output file(s) exist, e.g. {existing[0]}; choose a new --output or "
                            "pass --overwrite")
    return jobs


def describe(args, models: list[Model], jobs: list[Job], console: Console) -> None:
    """Say what is going to happen: the model(s), the intensity kinds assumed, mirroring, the device."""
    model = models[0]
    module = model.module
    if len(models) > 1:
        console.print(f"ensemble of {len(models)} runs (mean class probabilities): "
                      + ", ".join(str(m.source) for m in models))
    console.print(f"model: {type(module).__name__}, {module.net_spatial_dims}D, structures {model.structures}"
                  + (f", resampled to {model.target_spacing} mm" if model.target_spacing else "")
                  + (f", slices resized to {model.slice_size}" if model.slice_size else "")
                  + f", on {model.device}")
    kinds = sorted({job.source.kind for job in jobs})
    for kind in kinds:
        if kind in DEFAULT_INTENSITY:
            chosen = args.intensity or f"{DEFAULT_INTENSITY[kind]} (default; declare with --intensity)"
            console.print(f"intensity of {kind} inputs: {chosen}")
        elif kind == "stored":
            console.print("intensity: as stored in the canonical dataset folder (0..255)")
    console.print(f"mirroring: axes {tuple(module.inference.get('mirror_axes', ()))}")
    if args.keep_largest:
        console.print("post-processing: largest connected component of "
                      + ", ".join(STRUCTURE_OF_VALUE[v] for v in args.keep_largest))


# ------------------------------------------------------------------------------------------------- prediction
def predict_all(jobs: list[Job], models: list[Model], args, console: Console) -> tuple[int, list[str]]:
    """Predict the jobs in order; (outputs written, failure messages). Stops at the first failure unless
    --keep-going."""
    done, failures = 0, []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("predicting", total=len(jobs))
        for job in jobs:
            progress.update(task, description=job.source.name)
            try:
                scan = read_scan(job.source, args.intensity or DEFAULT_INTENSITY.get(job.source.kind))
                predict_scan(scan, job, models, args.label_format, args.keep_largest)
                done += 1
            except DatasetError as error:
                failures.append(str(error))
                progress.console.print(f"[red]failed:[/red] {error}")
                if not args.keep_going:
                    break
            progress.advance(task)
    return done, failures


def predict_scan(scan: Scan, job: Job, models: list[Model], label_format: str, keep_largest=()) -> None:
    """Preprocess as in training, slide the window of each model, average their class probabilities, and write
    the results on the input's grid (`keep_largest`: label values left with their largest component only)."""
    model = models[0]  # the members share structures and preprocessing (check_ensemble)
    module = model.module
    image = preprocessed(scan, model)
    probabilities = module.predict_volume(image)
    for member in models[1:]:
        probabilities += member.module.predict_volume(image)
    probabilities /= len(models)
    if job.probabilities:
        probabilities = on_grid(probabilities, scan.image.shape, model.nearest_axis(scan))
        for index, path in enumerate(job.probabilities.values(), start=1):
            write_output(scan, probabilities[index].cpu().numpy(), path)
    labels = module.labels_on_grid(probabilities, scan.image.shape, model.nearest_axis(scan)).cpu().numpy()
    if keep_largest:
        labels = largest_component(labels, keep_largest)
    if label_format == "benchmark":
        labels = benchmark_labels(labels, module.label_values)
    write_output(scan, labels, job.labels)


def preprocessed(scan: Scan, model: Model) -> torch.Tensor:
    """The scan as the model's input (C, X, Y, Z) on its device, prepared as its training cases were."""
    if scan.source.kind == "slice" and model.module.net_spatial_dims != 2:
        raise DatasetError(f"{scan.source.path}: a 2D slice, but this run's model is 3D; use a 2D model's run")
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(scan.image)[None], affine=scan.affine),
                          intensity=scan.intensity)
    steps = image_preprocessing(model.target_spacing, model.slice_size, model.intensity_scaling,
                                model.histogram_landmarks, model.resampling)
    return tio.Compose(steps)(subject)["image"].data.float().to(model.device)


def on_grid(probabilities: torch.Tensor, shape, nearest_axis: int | None = None) -> torch.Tensor:
    """Probabilities resampled to the scan's own grid, as `labels_on_grid` does before its argmax."""
    return probabilities_on_grid(probabilities, shape, nearest_axis)


def benchmark_labels(labels: np.ndarray, label_values) -> np.ndarray:
    """The benchmark's files: lungs 1/2 and all three 1/2/3 as canonical; an infection-only model writes 1."""
    if set(label_values) == {0, LABELS["infection"]}:
        return (labels == LABELS["infection"]).astype(np.uint8)
    return labels


if __name__ == "__main__":
    raise SystemExit(main())
