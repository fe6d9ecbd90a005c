"""The split of a custom task (README "Your own data"): canonical dataset folders of your own, split by a split
file or into k folds generated from a seed, optionally grouped by patient.

A fold's held-out cases are its test cases (cross-validation), so nothing is selected on them: validation
monitors training cases, or `data.validation.inner_cases` holds some out, as for task 1. A split file whose folds also
give a `test` list (the benchmark's Task3 form) makes `val` an in-domain validation list, as for tasks 2 and 3.

Split files:
- JSON: a list of folds, each {"train": [...], "val": [...]}: nnU-Net's `splits_final.json` and the benchmark's
  files (`covlight/resources/splits`).
- nnU-Net v1's `splits_final.pkl` (the same lists as numpy string arrays), read by an unpickler that builds only
  lists, dicts, strings and numpy string arrays: loading an ordinary pickle can run any code, this cannot.
Case ids are file stems; with several datasets, write `dataset/case` for an id that more than one of them holds.

Generated folds are the same on every machine and Python version: case ids are sorted, groups are ordered by a
SHA-256 of (seed, group), and each group in turn goes to the fold with the fewest cases so far (ties: the lowest
fold), so folds differ in size by at most one case when no grouping rule is given.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covlight.data.canonical import read_dataset
from covlight.errors import ConfigError, DatasetError
from covlight.splits import Split

Case = tuple[str, str]  # (dataset, case id)


def custom_split(
    datasets: Sequence[str],
    root: str,
    fold: int,
    num_folds: int,
    structures: Sequence[str],
    split_file: str | None = None,
    seed: int = 0,
    group_regex: str | None = None,
    group_key: str | None = None,
) -> Split:
    """The split of fold `fold`; a clear error (naming the file and the fix) for anything that cannot work."""
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets:
        raise ConfigError("task.datasets is empty: name the canonical dataset folder(s) of the task")
    if group_regex and group_key:
        raise ConfigError("task.group_regex and task.group_key both set: give one grouping rule")
    cases = _cases(Path(root).expanduser(), datasets, structures)
    groups = patient_groups(cases, group_regex, group_key, Path(root).expanduser()) \
        if group_regex or group_key else None
    if split_file:
        folds = read_split_file(Path(split_file).expanduser())
        if len(folds) != num_folds:
            raise ConfigError(f"{split_file} holds {len(folds)} fold(s) but task.num_folds={num_folds}: "
                              f"set task.num_folds={len(folds)}")
        _check_fold(fold, num_folds)
        resolved = [{key: _resolve(names, cases, split_file) for key, names in f.items()} for f in folds]
        entry = resolved[fold]  # every fold resolved: a wrong name anywhere in the file is found at once
        train, held_out = entry["train"], entry.get("test", entry["val"])
        val = entry["val"] if "test" in entry else []
        warnings = _straddling(train, held_out, groups, f"{split_file} fold {fold}") if groups else ()
        return Split(train=_by_dataset(train), val=_by_dataset(val), test=_by_dataset(held_out), warnings=warnings)
    _check_fold(fold, num_folds)
    folds = kfold(sorted(cases), num_folds, seed, groups)
    held_out = set(folds[fold])
    train = [case for case in sorted(cases) if case not in held_out]
    return Split(train=_by_dataset(train), val={}, test=_by_dataset(sorted(held_out)))


def _check_fold(fold, num_folds: int) -> None:
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ConfigError(f"fold={fold!r} is out of range: this task has folds 0..{num_folds - 1}")


def _cases(root: Path, datasets: Sequence[str], structures: Sequence[str]) -> list[Case]:
    """Every labelled case of the datasets, checked to annotate the subtask's structures."""
    cases = []
    for name in datasets:
        dataset = read_dataset(root / name)
        lacking = [s for s in structures if s not in dataset.annotated]
        if lacking:
            raise DatasetError(f"{dataset.root / 'dataset.json'} annotates {dataset.annotated}, not {lacking}: "
                               "choose a subtask of the structures it annotates (subtask=lung|infection|"
                               "lung_infection), or import the missing masks")
        cases += [(name, case) for case in sorted(dataset.cases) if dataset.has_label(case)]
    return cases


def patient_groups(cases: list[Case], regex: str | None, key: str | None, root: Path) -> dict[Case, str]:
    """case -> patient: the first capture group of `regex` on the case id, or the case's `key` in dataset.json."""
    if regex:
        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise ConfigError(f"task.group_regex={regex!r} is not a regular expression ({error})") from None
        if pattern.groups < 1:
            raise ConfigError(f"task.group_regex={regex!r} has no capture group: put the patient part in "
                              r"parentheses, e.g. '^(patient\d+)_'")
        groups = {}
        for case in cases:
            match = pattern.search(case[1])
            if match is None or match.group(1) is None:
                raise DatasetError(f"task.group_regex={regex!r} does not match case {case[1]!r} of "
                                   f"{root / case[0] / 'dataset.json'}: fix the regex so its first group "
                                   "captures the patient of every case id")
            groups[case] = match.group(1)
        return groups
    entries = {name: read_dataset(root / name).cases for name in {dataset for dataset, _ in cases}}
    groups = {}
    for case in cases:
        value = entries[case[0]][case[1]].get(key)
        if value is None:
            raise DatasetError(f"{root / case[0] / 'dataset.json'}: case {case[1]!r} has no {key!r} entry "
                               f"(task.group_key={key}); add it to every case entry, or use task.group_regex")
        groups[case] = str(value)
    return groups


def kfold(cases: list[Case], num_folds: int, seed: int, groups: dict[Case, str] | None = None) -> list[list[Case]]:
    """`num_folds` disjoint lists of cases covering `cases`, each group on one side (see the module's doc)."""
    members: dict[str, list[Case]] = {}
    for case in sorted(cases):
        members.setdefault(groups[case] if groups else "/".join(case), []).append(case)
    if len(members) < num_folds:
        what = "patient groups" if groups else "cases"
        raise ConfigError(f"{len(members)} {what} cannot make {num_folds} folds: set task.num_folds to at most "
                          f"{len(members)}")

    def order(group: str) -> str:
        return hashlib.sha256(f"{seed}/{group}".encode()).hexdigest()

    folds: list[list[Case]] = [[] for _ in range(num_folds)]
    for group in sorted(members, key=lambda g: (-len(members[g]), order(g))):
        smallest = min(range(num_folds), key=lambda k: (len(folds[k]), k))
        folds[smallest] += members[group]
    return [sorted(fold) for fold in folds]


def _resolve(names, cases: list[Case], split_file) -> list[Case]:
    """Split-file names (`case` or `dataset/case`) as cases of the task; unknown or ambiguous names are errors."""
    by_id: dict[str, list[Case]] = {}
    for case in cases:
        by_id.setdefault(case[1], []).append(case)
        by_id.setdefault("/".join(case), []).append(case)
    resolved, unknown = [], []
    for name in names:
        found = by_id.get(name, [])
        if len(found) > 1:
            raise DatasetError(f"{split_file}: case {name!r} is in several datasets ({[d for d, _ in found]}); "
                               "write it as dataset/case")
        if not found:
            unknown.append(name)
        else:
            resolved.append(found[0])
    if unknown:
        datasets = sorted({dataset for dataset, _ in cases})
        raise DatasetError(f"{split_file} names case(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} that no "
                           f"dataset of the task holds with a label ({datasets}): fix the file, or import the cases")
    return resolved


def _by_dataset(cases: list[Case]) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for dataset, case in cases:
        lists.setdefault(dataset, []).append(case)
    return lists


def _straddling(train: list[Case], held_out: list[Case], groups: dict[Case, str], where: str) -> tuple[str, ...]:
    """A warning when a patient has cases on both sides of a split file's fold."""
    both = sorted({groups[c] for c in train} & {groups[c] for c in held_out})
    if not both:
        return ()
    return (f"{where}: patient(s) {both[:5]} have cases in training and in the held-out set, so their scores are "
            "optimistic; generate grouped folds instead (task.split_file=null with the grouping rule)",)


# ------------------------------------------------------------------------------------------------ split files
def read_split_file(path: Path) -> list[dict[str, list[str]]]:
    """A split file as a list of folds {"train": [...], "val": [...][, "test": [...]]} of case names."""
    if not path.is_file():
        raise DatasetError(f"split file {path} does not exist: give task.split_file as an absolute path, or "
                           "task.split_file=null to generate folds")
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as handle:
                folds = RestrictedUnpickler(handle).load()
        else:
            folds = json.loads(path.read_text(encoding="utf-8"))
    except pickle.UnpicklingError as error:
        raise DatasetError(f"{path}: refused ({error}). Only nnU-Net split files are read: a list of folds of "
                           "case-id lists; convert the file to JSON if it holds anything else.") from None
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"{path} cannot be read ({type(error).__name__}: {error}): give a JSON list of "
                           '{"train": [...], "val": [...]} folds, or nnU-Net\'s splits_final.pkl') from None
    return _checked_folds(folds, path)


def _checked_folds(folds, path: Path) -> list[dict[str, list[str]]]:
    form = 'a list of folds, each {"train": [case ids], "val": [case ids]} (optionally "test")'
    if not isinstance(folds, list) or not folds:
        raise DatasetError(f"{path}: expected {form}")
    checked = []
    for index, fold in enumerate(folds):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold) or set(fold) - {"train", "val", "test"}:
            raise DatasetError(f"{path}: fold {index} is not {form}")
        entry = {}
        for key, names in fold.items():
            if isinstance(names, np.ndarray) and names.dtype.kind in "US" and names.ndim == 1:
                names = names.tolist()
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DatasetError(f"{path}: fold {index} {key!r} is not a list of case ids")
            entry[key] = list(names)
        checked.append(entry)
    return checked


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only what nnU-Net's `splits_final.pkl` holds: lists of (Ordered)dicts of numpy string arrays."""

    ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # written by NumPy 1
        ("numpy._core.multiarray", "_reconstruct"),  # written by NumPy 2
        ("_codecs", "encode"),  # protocol 2 pickles array bytes as text + encode
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a split file never holds")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # this NumPy's own _reconstruct, whatever its module
        return super().find_class(module, name)
