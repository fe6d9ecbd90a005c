"""`python -m covlight.suggest`: which unlabelled cases or slices to annotate next (active selection).

    python -m covlight.suggest --run RUN [--run RUN ...] --pool DATASET --budget N \\
        [--unit slice|case] [--strategy entropy|ensemble|mc_dropout|random] [--seed S] [--out DIR]

A trained run (or the ensemble of several, e.g. the fold models of a cross-validation; loaded as
`covlight.predict` loads them) predicts every candidate of the pool, a canonical dataset folder (a path, or a
name under `$COVLIGHT_DATA`, default `data/`). Candidates are the pool's cases that no run trained on (`--cases`
narrows them), or with `--unit slice` their axial slices (z index of the stored RAS+ volume; one-slice cases from
PNG/JPG are one slice each). Each is scored, the best `--budget` kept under the diversity rule, and written to
`OUT/suggestions.csv` (rank order; columns case, slice, score, why; slice is empty for `--unit case`) and
`OUT/suggestions.png` (the top `--sheet` suggestions: the slice, the model's prediction on it, its uncertainty
map; for a case, its most uncertain slice).

Uncertainty, per voxel, on each case's own grid, divided by ln K (K = the model's classes) so it lies in 0..1:
- `entropy`: the softmax entropy H(p) of the prediction (of the ensemble's mean probabilities with several runs).
- `ensemble`: the runs' disagreement, their mutual information H(mean p_m) - mean H(p_m) (BALD); 2 runs or more.
- `mc_dropout`: the same mutual information over `--samples` forward passes of each run with its dropout layers
  sampling (Gal & Ghahramani); the net needs dropout (`model.module.net.dropout` > 0 at training).
- `random`: a uniform draw per candidate from `--seed` (the baseline every strategy must beat).
A slice's (case's) score is the mean of the voxel uncertainty over its foreground-relevant voxels: those where the
mean prediction gives the foreground (any class but the background) a probability of at least 0.1
(`RELEVANT_FOREGROUND`); a slice without such a voxel scores 0. Background far from any structure is near-certain
and would only dilute the mean; a structure the model misses entirely is invisible to every uncertainty.

Diversity rule (`--unit slice`): candidates are taken in score order, skipping a slice closer than `--min-gap`
slices (default 5) to one already chosen from its case, and, with `--per-case n`, any slice of a case that already
has n; so the top N are never N neighbouring slices of one scan. When the rule leaves fewer than `--budget`
candidates, nothing is written and the error says which option to lower.

Refused, before anything is predicted (one line naming the file and the fix): a budget larger than the pool; a
pool candidate that is a test case of a run's split (its `config.yaml`, `data.split`): selection never looks at
test cases; a run whose structures differ from those the pool annotates (`dataset.json` `annotated`; an unlabelled
pool annotates none and suits any run); `mc_dropout` with a run whose net has no dropout; `ensemble` with one run.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from covlight.atomic import replacing, write_text
from covlight.benchmark import ordered_structures
from covlight.data.canonical import CanonicalDataset, read_dataset
from covlight.errors import CovlightError, report_error
from covlight.predict import Model, check_ensemble, load_model, on_grid, preprocessed, run_files
from covlight.scans import Source, read_scan

STRATEGIES = ("entropy", "ensemble", "mc_dropout", "random")
RELEVANT_FOREGROUND = 0.1  # a voxel counts towards a score when the foreground gets at least this probability
CSV_COLUMNS = ("case", "slice", "score", "why")


@dataclass
class Suggestion:
    case: str
    slice: int | None  # axial slice (z index); None for a whole case
    score: float
    why: str


@dataclass
class CaseMaps:
    """One case's prediction and voxel uncertainty on its own grid (x, y, z)."""

    image: np.ndarray  # 0..255
    labels: np.ndarray  # canonical label values
    uncertainty: np.ndarray  # 0..1
    relevant: np.ndarray  # bool: foreground probability >= RELEVANT_FOREGROUND

    def slice_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean uncertainty over the relevant voxels of each axial slice (0 where none), their count)."""
        counts = self.relevant.sum(axis=(0, 1))
        sums = (self.uncertainty * self.relevant).sum(axis=(0, 1))
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0), counts


def main(argv=None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    try:
        models = load_runs(args)
        pool = read_dataset(pool_folder(args.pool))
        candidates = candidate_cases(pool, models, args)
        outputs = output_files(args)
        console.print(f"{len(candidates)} candidate case(s) of {pool.root}; strategy {args.strategy}, "
                      f"unit {args.unit}, budget {args.budget}, on {models[0].device}")
        chosen = suggest(models, pool, candidates, args, console)
    except CovlightError as error:
        return report_error("covlight.suggest", error)
    write_csv(chosen, outputs["csv"])
    console.print(f"wrote {len(chosen)} suggestion(s) to {outputs['csv']}")
    if args.sheet:
        write_sheet(chosen[: args.sheet], models, pool, args, outputs["png"], console)
        console.print(f"wrote the sheet of the top {min(args.sheet, len(chosen))} to {outputs['png']}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m covlight.suggest",
                                     description="Rank a pool's unlabelled cases or slices for annotation.")
    parser.add_argument("--run", type=Path, action="append", default=[],
                        help="a finished run folder; repeat it for an ensemble (e.g. the fold models)")
    parser.add_argument("--runs", action="append", default=[],
                        help="a glob pattern of run folders (quoted): every match joins the ensemble")
    parser.add_argument("--pool", required=True,
                        help="the canonical dataset folder to choose from (a path, or a name under "
                             "$COVLIGHT_DATA, default data/)")
    parser.add_argument("--cases", nargs="+", help="only these case ids of the pool")
    parser.add_argument("--budget", type=int, required=True, help="how many cases or slices to suggest")
    parser.add_argument("--unit", choices=("slice", "case"), default="slice", help="(default: %(default)s)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="entropy", help="(default: %(default)s)")
    parser.add_argument("--samples", type=int, default=8, help="mc_dropout: passes per run (default: %(default)s)")
    parser.add_argument("--min-gap", type=int, default=5,
                        help="slices chosen from one case are at least this many slices apart (default: %(default)s)")
    parser.add_argument("--per-case", type=int, default=0,
                        help="at most this many slices per case (default: 0, no limit)")
    parser.add_argument("--seed", type=int, default=0, help="random draws and dropout masks (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("suggestions"), help="output folder (default: %(default)s)")
    parser.add_argument("--sheet", type=int, default=12,
                        help="suggestions shown in suggestions.png; 0: no sheet (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace suggestions.csv / .png that exist")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    if not (args.run or args.runs):
        parser.error("give --run (or --runs): the trained run(s) that choose")
    for name in ("budget", "samples", "min_gap"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.per_case < 0 or args.sheet < 0:
        parser.error("--per-case and --sheet must be 0 or more")
    return args


# ------------------------------------------------------------------------------------------------ checks
def load_runs(args) -> list[Model]:
    """The runs' models (checked to form an ensemble) and what the strategy needs of them."""
    files = run_files(SimpleNamespace(ckpt=None, config=None, run=args.run, runs=args.runs))
    loading = SimpleNamespace(device=args.device, mirror=False)
    models = [load_model(loading, config, checkpoint, source) for config, checkpoint, source in files]
    check_ensemble(models)
    if args.strategy == "ensemble" and len(models) < 2:
        raise CovlightError("--strategy ensemble measures the disagreement of several runs, but one was given: "
                            "add --run for each member (e.g. the fold models of a cross-validation), or use "
                            "--strategy entropy or mc_dropout")
    if args.strategy == "mc_dropout":
        for model in models:
            if not dropout_layers(model.module.net):
                raise CovlightError(f"{model.source / 'config.yaml'}: the net has no dropout "
                                    "(model.module.net.dropout is 0), so MC dropout has nothing to sample. Train a "
                                    "run with model.module.net.dropout=0.1 (for example), or use --strategy entropy")
    return models


def dropout_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def pool_folder(pool: str) -> Path:
    path = Path(pool).expanduser()
    if path.is_dir() or len(path.parts) > 1:
        return path
    return Path(os.environ.get("COVLIGHT_DATA", "data")) / pool


def run_split(run: Path):
    """The split a run trained and tested on, from its config.yaml (`data.split`)."""
    config_path = run / "config.yaml"
    try:
        return instantiate(OmegaConf.load(config_path).data.split)
    except CovlightError as error:
        raise CovlightError(f"{config_path}: its split (data.split) cannot be rebuilt, so its test cases are "
                            f"unknown and nothing is suggested ({error})") from None
    except Exception as error:
        raise CovlightError(f"{config_path}: its split (data.split) cannot be rebuilt, so its test cases are "
                            f"unknown and nothing is suggested ({type(error).__name__}: {error}); use a run "
                            "folder written by covlight") from None


def candidate_cases(pool: CanonicalDataset, models: list[Model], args) -> list[str]:
    """The pool's cases (those of --cases) that no run trained on (they are labelled already), after refusing a
    pool that holds a test case of a run, is annotated for other structures, or is smaller than the budget."""
    listing = pool.root / "dataset.json"
    if args.cases:
        unknown = [case for case in args.cases if case not in pool.cases]
        if unknown:
            raise CovlightError(f"--cases: {unknown[:5]} not in {listing}; give case ids of the pool")
    given = list(dict.fromkeys(args.cases)) if args.cases else sorted(pool.cases)
    dataset = pool.root.resolve().name  # splits name datasets by their folder, as the data module reads them
    trained = set()
    for model in models:
        split = run_split(model.source)
        trained |= set(split.train.get(dataset, []))
        tested = set(split.test.get(dataset, []))
        leaked = [case for case in given if case in tested]
        if leaked:
            raise CovlightError(
                f"the pool {listing} holds {len(leaked)} test case(s) of the run {model.source} ({leaked[:3]}; its "
                "config.yaml, data.split): selection never looks at test cases. Leave them out (--cases with the "
                "pool's other cases), or import the scans to choose from as a dataset of their own")
        if pool.annotated and ordered_structures(pool.annotated) != model.structures:
            raise CovlightError(
                f"the run {model.source} segments {model.structures} but the pool {listing} annotates "
                f"{ordered_structures(pool.annotated)}: suggest with a run of the pool's structures, or a pool "
                "imported for the run's (a pool imported without labels suits any run)")
    candidates = [case for case in given if case not in trained]
    if not candidates:
        raise CovlightError(f"the pool {listing} holds no unlabelled case (every case given was a training case "
                            "of the run): give another --pool or --cases")
    size = len(candidates) if args.unit == "case" else sum(slices_of(pool, case) for case in candidates)
    if args.budget > size:
        raise CovlightError(f"--budget {args.budget} is larger than the pool: {listing} offers {size} unlabelled "
                            f"{args.unit}(s) (training cases of the run left out). Lower --budget to {size} or "
                            "less, or add scans to the pool")
    return candidates


def slices_of(pool: CanonicalDataset, case: str) -> int:
    shape = nib.load(pool.image_path(case)).shape
    return int(shape[2]) if len(shape) > 2 else 1


def output_files(args) -> dict[str, Path]:
    outputs = {"csv": args.out / "suggestions.csv", "png": args.out / "suggestions.png"}
    existing = [str(path) for key, path in outputs.items() if path.exists() and (key == "csv" or args.sheet)]
    if existing and not args.overwrite:
        raise CovlightError(f"{existing[0]} exists: choose another --out, or pass --overwrite")
    return outputs


# ---------------------------------------------------------------------------------------------- scoring
def suggest(models: list[Model], pool: CanonicalDataset, candidates: list[str], args,
            console: Console | None = None) -> list[Suggestion]:
    """Score every candidate and choose `args.budget` of them under the diversity rule, in score order."""
    scored: list[Suggestion] = []
    rng = np.random.default_rng(args.seed)
    for case in progress(candidates, "scoring", console):
        if args.strategy == "random":
            count = 1 if args.unit == "case" else slices_of(pool, case)
            scored += [Suggestion(case, None if args.unit == "case" else z, float(value),
                                  f"random draw (seed {args.seed})") for z, value in enumerate(rng.random(count))]
            continue
        maps = case_maps(models, pool, case, args.strategy, args.samples, args.seed)
        scored += scores_of(case, maps, args.unit, describe(args.strategy, len(models), args.samples))
    chosen = diverse(scored, args.budget, args.unit, args.min_gap, args.per_case)
    if len(chosen) < args.budget:
        raise CovlightError(f"the diversity rule (--min-gap {args.min_gap}"
                            + (f", --per-case {args.per_case}" if args.per_case else "")
                            + f") leaves {len(chosen)} of the {args.budget} slices asked for in {pool.root}: lower "
                            "--min-gap or raise --per-case (0: no limit), or lower --budget")
    total = len(scored)
    return [Suggestion(s.case, s.slice, s.score, f"{s.why}; rank {rank} of {total} {args.unit}s")
            for rank, s in enumerate(chosen, start=1)]


def describe(strategy: str, runs: int, samples: int) -> str:
    members = f"{runs} runs" if strategy == "ensemble" else f"{samples} dropout passes x {runs} run(s)"
    what = ("softmax entropy" + (f" of the mean of {runs} runs" if runs > 1 else "") if strategy == "entropy"
            else f"mutual information of {members}")
    return f"mean {what} / ln K over the voxels with foreground probability >= {RELEVANT_FOREGROUND}"


def scores_of(case: str, maps: CaseMaps, unit: str, what: str) -> list[Suggestion]:
    per_slice, counts = maps.slice_scores()
    if unit == "slice":
        return [Suggestion(case, z, float(score), f"{what} ({int(count)} voxels)" if count else
                           f"no voxel with foreground probability >= {RELEVANT_FOREGROUND}")
                for z, (score, count) in enumerate(zip(per_slice, counts, strict=True))]
    count = int(counts.sum())
    score = float((maps.uncertainty * maps.relevant).sum() / count) if count else 0.0
    return [Suggestion(case, None, score, f"{what} ({count} voxels; most uncertain slice z={int(per_slice.argmax())})")]


def diverse(scored: list[Suggestion], budget: int, unit: str, min_gap: int, per_case: int) -> list[Suggestion]:
    """The best `budget` in score order (ties: case, then slice), skipping, for slices, one closer than `min_gap`
    to a slice already chosen from its case or beyond `per_case` slices of one case (0: no limit)."""
    chosen: list[Suggestion] = []
    taken: dict[str, list[int]] = defaultdict(list)
    for item in sorted(scored, key=lambda s: (-s.score, s.case, s.slice or 0)):
        if len(chosen) == budget:
            break
        if unit == "slice":
            slices = taken[item.case]
            if (per_case and len(slices) >= per_case) or any(abs(item.slice - z) < min_gap for z in slices):
                continue
            slices.append(item.slice)
        chosen.append(item)
    return chosen


def case_maps(models: list[Model], pool: CanonicalDataset, case: str, strategy: str, samples: int,
              seed: int) -> CaseMaps:
    """Predict one case with every member (each run; each dropout pass for mc_dropout) and measure uncertainty."""
    scan = read_scan(Source(pool.image_path(case), case, "stored", pool.cases[case].get("intensity")), None)
    passes = samples if strategy == "mc_dropout" else 1
    torch.manual_seed(zlib.crc32(f"{seed}/{case}".encode()))  # the same dropout masks every time a case is seen
    total = member_entropy = None
    members = 0
    for model in models:
        image = preprocessed(scan, model)
        with dropout_sampling(model.module.net, strategy == "mc_dropout"):
            for _ in range(passes):
                probabilities = on_grid(model.module.predict_volume(image), scan.image.shape, model.nearest_axis(scan))
                entropy = entropy_of(probabilities)
                total = probabilities if total is None else total + probabilities
                member_entropy = entropy if member_entropy is None else member_entropy + entropy
                members += 1
    mean = total / members
    uncertainty = entropy_of(mean)
    if strategy in ("ensemble", "mc_dropout"):
        uncertainty = (uncertainty - member_entropy / members).clamp_min(0)
    uncertainty = uncertainty / math.log(mean.shape[0])
    labels = models[0].module.class_to_label[mean.argmax(0)]
    return CaseMaps(scan.image, labels.cpu().numpy(), uncertainty.cpu().numpy(),
                    (1 - mean[0] >= RELEVANT_FOREGROUND).cpu().numpy())


def entropy_of(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy (nats) of class probabilities (K, ...)."""
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(0)


@contextmanager
def dropout_sampling(net: nn.Module, on: bool) -> Iterator[None]:
    """The net's dropout layers sample (train mode) inside the block when `on`; everything else stays in eval."""
    layers = dropout_layers(net) if on else []
    for layer in layers:
        layer.train()
    try:
        yield
    finally:
        for layer in layers:
            layer.eval()


def progress(items: list, what: str, console: Console | None) -> Iterator:
    if console is None:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=len(items))
        for item in items:
            bar.update(task, description=f"{what} {item}")
            yield item
            bar.advance(task)


# ---------------------------------------------------------------------------------------------- outputs
def write_csv(chosen: list[Suggestion], path: Path) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in chosen:
        writer.writerow([s.case, "" if s.slice is None else s.slice, repr(s.score), s.why])
    write_text(path, text.getvalue())


def read_csv(path: Path) -> list[Suggestion]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [Suggestion(row["case"], int(row["slice"]) if row["slice"] else None, float(row["score"]), row["why"])
                for row in csv.DictReader(handle)]


def axial_view(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of an (x, y, z) RAS+ array as displayed radiologically: anterior up, the patient's right (+x)
    on the image's left."""
    return volume[:, :, z].T[::-1, ::-1]


def write_sheet(shown: list[Suggestion], models: list[Model], pool: CanonicalDataset, args, path: Path,
                console: Console | None = None) -> None:
    """A PNG, one row per suggestion: the slice, the prediction on it, the uncertainty map (radiological view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covlight.callbacks.overlays import COLOURS

    strategy = "entropy" if args.strategy == "random" else args.strategy
    figure, axes = plt.subplots(len(shown), 3, figsize=(9, 3 * len(shown)), dpi=90, squeeze=False)
    cache: dict[str, CaseMaps] = {}
    for row, item in zip(axes, progress(shown, "drawing", console), strict=True):
        if item.case not in cache:
            cache[item.case] = case_maps(models, pool, item.case, strategy, args.samples, args.seed)
        maps = cache[item.case]
        z = item.slice if item.slice is not None else int(maps.slice_scores()[0].argmax())
        def view(volume, z=z):
            return axial_view(volume, z)

        row[0].imshow(view(maps.image), cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"{item.case} z={z}", fontsize=8)
        row[1].imshow(view(maps.image), cmap="gray", vmin=0, vmax=255)
        for value, colour in COLOURS.items():
            mask = view(maps.labels == value)
            if mask.any():
                row[1].contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
        row[1].set_title("prediction", fontsize=8)
        shown_map = row[2].imshow(view(maps.uncertainty), cmap="magma", vmin=0, vmax=1)
        row[2].set_title(f"{strategy} uncertainty (score {item.score:.3f})", fontsize=8)
        figure.colorbar(shown_map, ax=row[2], fraction=0.046)
        for axis in row:
            axis.axis("off")
    figure.suptitle(f"annotate next: {pool.root.name}, {args.strategy}, top {len(shown)} of {args.budget}", fontsize=10)
    figure.tight_layout()
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
