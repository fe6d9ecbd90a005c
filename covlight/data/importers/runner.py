"""Running one import: which cases are done, writing the rest, per-case report lines, `dataset.json` last.

Reruns are idempotent. Each case entry records a fingerprint of its source files (names and sizes), and the
dataset records the import's options (importer, label map, intensity kind, ...). A case counts as done only when
its entry exists with the same fingerprint AND its files are on disk. Files are written atomically, and a case's
entry is appended to a progress log only after both of its files are complete; `dataset.json` is written when the
run ends and the log is then removed. A killed run therefore never leaves a half-written case looking done, and
the next run resumes. A dataset built with other options, or from other files for the same case ids, is only
replaced with --force. Cases imported earlier that this source lacks are kept (and reported).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from covlight.data.canonical import write_case, write_dataset_json
from covlight.data.importers.archives import SourceRef
from covlight.data.importers.cases import Prepared
from covlight.errors import DatasetError

PROGRESS = ".prepare-progress.jsonl"  # first line: the import's options; then one line per finished case
FORMAT = 1  # part of the options: bump when the importers' output changes, so old datasets need --force


@dataclass
class Local:
    """A source file on disk, with the name messages use (a path, or archive:member)."""

    path: Path
    name: str


@dataclass
class CaseSpec:
    case_id: str
    files: dict[str, SourceRef]  # role -> source file ("image", "label", ...)
    build: Callable[[dict[str, Local]], Prepared]

    def fingerprint(self) -> str:
        payload = {role: ref.fingerprint() for role, ref in sorted(self.files.items())}
        return _digest(payload)


@dataclass
class DatasetPlan:
    """One canonical dataset to write: its cases, structures, dataset.json fields and the options that made it."""

    name: str
    cases: list[CaseSpec]
    annotated: list[str]
    meta: dict  # source, licence, ... (into dataset.json)
    options: dict  # importer and its options: a rerun with other options is a different source
    official: tuple[str, ...] = ()  # the official case ids, to report which are missing
    notes: list[str] = field(default_factory=list)  # lines for the report (e.g. files that were ignored)


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _previous(root: Path) -> tuple[dict | None, dict]:
    """(options, case entries) of what `root` holds from earlier runs; options None when it holds nothing.

    A torn last line of the progress log (a kill while appending) is ignored: its case is simply redone."""
    try:
        final = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        final = None
    options = final.get("import_options", {}) if isinstance(final, dict) else None
    entries = dict(final.get("cases", {})) if isinstance(final, dict) else {}
    try:
        lines = (root / PROGRESS).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "import_options" in record:
            options = record["import_options"]
        elif "case" in record:
            entries[record["case"]] = record["entry"]
    return options, entries


def _clear(root: Path) -> None:
    """Remove what an import writes (and only that) from `root`."""
    for folder in ("images", "labels"):
        shutil.rmtree(root / folder, ignore_errors=True)
    for name in ("dataset.json", PROGRESS):
        (root / name).unlink(missing_ok=True)


def _remove_partial_files(root: Path) -> None:
    """Files a killed import was writing (`save_nifti` writes `.partial-*` names, renamed when whole)."""
    for folder in ("images", "labels"):
        for path in (root / folder).glob(".partial-*"):
            path.unlink(missing_ok=True)


def _record(root: Path, options: dict, case_id: str, entry: dict) -> None:
    """Append a finished case to the progress log (which starts with the options, once a case is finished)."""
    lines = [] if (root / PROGRESS).is_file() else [{"import_options": options}]
    with open(root / PROGRESS, "a") as log:
        log.writelines(json.dumps(record) + "\n" for record in [*lines, {"case": case_id, "entry": entry}])


def _done(root: Path, case_id: str, entry: dict | None, fingerprint: str) -> bool:
    if not entry or entry.get("source_fingerprint") != fingerprint:
        return False
    files = [root / "images" / f"{case_id}.nii.gz"]
    if "label_sha256" in entry:
        files.append(root / "labels" / f"{case_id}.nii.gz")
    return all(path.is_file() for path in files)


def _conflict(plan: DatasetPlan, options: dict | None, entries: dict, fingerprints: dict) -> str | None:
    """Why the folder's earlier content is not this source's (None when it is, or when there is none)."""
    if options is None:
        return None
    if options != plan.options:
        if not options:
            return "it was not written by covlight.prepare"
        changed = sorted(k for k in set(options) | set(plan.options) if options.get(k) != plan.options.get(k))
        return f"it was imported with other options ({', '.join(f'{k}={options.get(k)!r}' for k in changed)})"
    other = [c for c, fp in fingerprints.items() if c in entries and entries[c].get("source_fingerprint") != fp]
    if other:
        return f"case(s) {_few(other, 5)} came from other source files"
    return None


def _describe(case_id: str, prepared: Prepared) -> str:
    shape = "x".join(str(n) for n in prepared.image.shape)
    spacing = "x".join(f"{s:.2f}" for s in np.sqrt((prepared.affine[:3, :3] ** 2).sum(axis=0)))
    kind = {"hu": "HU -> window [-1250, 250] -> 0..255", "window_0_255": "already 0..255, kept",
            "8bit": "8-bit, kept"}[prepared.intensity]
    labels = "no label" if prepared.label is None else "labels " + ",".join(
        str(v) for v in np.unique(prepared.label))
    extra = "".join(f", {k}: {v}" for k, v in prepared.notes.items())
    return f"{case_id}: {shape} voxels, {spacing} mm, {kind}, {labels}{extra}"


def say(line: str) -> None:
    """Print a report line without breaking the progress bar."""
    tqdm.write(line, file=sys.stdout)


def run_plan(plan: DatasetPlan, dest: Path, force: bool = False, echo: Callable[[str], None] = say) -> Path:
    """Import `plan` into `dest/<plan.name>`; returns the dataset folder."""
    root = Path(dest) / plan.name
    plan = replace(plan, options={**plan.options, "format": FORMAT})
    ids = [case.case_id for case in plan.cases]
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise DatasetError(f"{plan.name}: the source holds more than one file set for case(s) {duplicates[:5]}; "
                           "keep one copy of each case in --src.")
    if not plan.cases:
        raise DatasetError(f"{plan.name}: no cases found in --src. Check that it is the right download "
                           f"(python -m covlight.prepare {plan.options['importer']} --help shows the layout).")
    fingerprints = {case.case_id: case.fingerprint() for case in plan.cases}
    _remove_partial_files(root)
    previous, entries = _previous(root)
    if force:
        _clear(root)
        previous, entries = None, {}
    conflict = _conflict(plan, previous, entries, fingerprints)
    if conflict:
        raise DatasetError(f"{root} already holds a dataset from a different source: {conflict}. "
                           "Re-run with --force to replace it, or choose another --dest.")
    for line in plan.notes:
        echo(f"{plan.name}: {line}")
    imported = skipped = 0
    for case in tqdm(plan.cases, unit="case", desc=plan.name, file=sys.stderr, disable=None, leave=False):
        fingerprint = fingerprints[case.case_id]
        if _done(root, case.case_id, entries.get(case.case_id), fingerprint):
            skipped += 1
            echo(f"{case.case_id}: already imported, skipped")
            continue
        prepared = case.build({role: Local(ref.local(), ref.display) for role, ref in case.files.items()})
        entry = write_case(root, case.case_id, prepared.image, prepared.label, prepared.affine, prepared.intensity)
        entry.update(prepared.notes)
        entry["source_files"] = {role: ref.short for role, ref in sorted(case.files.items())}
        entry["source_fingerprint"] = fingerprint
        entries[case.case_id] = entry
        _record(root, plan.options, case.case_id, entry)
        imported += 1
        echo(_describe(case.case_id, prepared))

    cases = dict(sorted(entries.items()))
    missing = [c for c in plan.official if c not in cases]
    extra = [c for c in cases if plan.official and c not in plan.official]
    kept = [c for c in cases if c not in fingerprints]
    source = _digest({"import_options": plan.options, "cases": {c: e["source_fingerprint"] for c, e in cases.items()}})
    write_dataset_json(root, plan.name, cases, plan.annotated, **plan.meta, import_options=plan.options,
                       source_fingerprint=source, missing_official_cases=missing)
    (root / PROGRESS).unlink(missing_ok=True)

    echo(f"{plan.name}: {imported} imported, {skipped} already done, {len(cases)} in {root / 'dataset.json'}")
    if kept:
        echo(f"{plan.name}: {len(kept)} case(s) kept from an earlier import (not in this source): {_few(kept)}")
    if missing:
        echo(f"{plan.name}: {len(missing)} of the {len(plan.official)} official cases are missing: {_few(missing)} "
             "(a subset is fine; add the files and re-run to complete it)")
    if extra:
        echo(f"{plan.name}: {len(extra)} case(s) not in the official lists: {_few(extra)}")
    return root


def _few(ids: list[str], count: int = 8) -> str:
    return ", ".join(ids[:count]) + (f" ... (+{len(ids) - count})" if len(ids) > count else "")
