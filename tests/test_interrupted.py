"""Import, evaluate and report really killed (SIGKILL) mid-way: nothing that looks complete is left behind, and
a rerun completes with the very results of an uninterrupted run. (Training killed and resumed: test_reliability.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covlight.data.importers.runner import PROGRESS
from tests.helpers import official_fakes as fakes
from tests.helpers.run_folders import FOLDS, NAMES, fake_rows, make_run
from tests.helpers.runs import REPO

pytestmark = pytest.mark.slow


def run(*argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, argv)], cwd=REPO, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)


def start(argv: list) -> subprocess.Popen:
    """`python -m argv...` in a process group of its own, so SIGKILL reaches its workers too."""
    return subprocess.Popen([sys.executable, "-m", *map(str, argv)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(argv: list, ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `python -m argv...`, SIGKILL its process group as soon as `ready()`; fail if it ended first."""
    process = start(argv)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the command ended before it could be killed"
        assert time.monotonic() < deadline, "the command never reached the point to kill it at"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_after(argv: list, seconds: float) -> bool:
    """Start `python -m argv...` and SIGKILL it after `seconds`; whether it was still running then."""
    process = start(argv)
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


def timed(*argv) -> float:
    start = time.monotonic()
    done = run(*argv)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.monotonic() - start


# ---- import -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """A folder of 24 small HU scans and label maps, LPS-oriented as converters write them."""
    src = tmp_path_factory.mktemp("volumes")
    for index in range(24):
        p = fakes.phantom(f"case_{index:02d}")
        fakes.save_lps(src / f"scan_{index:02d}.nii.gz", fakes.hu(p), p.spacing, np.int16)
        fakes.save_lps(src / f"mask_{index:02d}.nii.gz", p.label, p.spacing, np.uint8)
    return src


def import_command(src: Path, dest: Path) -> list:
    return ["covlight.prepare", "folder", "--src", src, "--dest", dest, "--name", "mine", "--images",
            "scan_*.nii.gz", "--labels", "mask_*.nii.gz", "--intensity", "hu"]


def finished_cases(root: Path) -> int:
    progress = root / PROGRESS
    return max(len(progress.read_text(encoding="utf-8").splitlines()) - 1, 0) if progress.is_file() else 0


def dataset_content(root: Path) -> dict:
    """Every case's arrays and affine, and dataset.json's entries without the gzip-dependent file digests."""
    cases = json.loads((root / "dataset.json").read_text(encoding="utf-8"))["cases"]
    content = {}
    for case_id, entry in cases.items():
        files = [nib.load(root / folder / f"{case_id}.nii.gz") for folder in ("images", "labels")]
        content[case_id] = ({k: v for k, v in entry.items() if not k.endswith("sha256")},
                            [(np.asarray(f.dataobj), f.affine) for f in files])
    return content


def test_import_killed_mid_way_resumes_and_completes(volumes, tmp_path):
    done = run(*import_command(volumes, tmp_path / "whole"))
    assert done.returncode == 0, done.stderr[-3000:]

    root = tmp_path / "killed" / "mine"
    kill_when(import_command(volumes, tmp_path / "killed"), lambda: finished_cases(root) >= 3)
    assert not (root / "dataset.json").exists(), "a killed import left a dataset.json: it would look complete"
    recorded = finished_cases(root)
    assert 3 <= recorded < 24

    rerun = run(*import_command(volumes, tmp_path / "killed"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{recorded} already done" in rerun.stdout
    assert not list(root.rglob(".partial-*")) and not (root / PROGRESS).exists()
    whole, resumed = dataset_content(tmp_path / "whole" / "mine"), dataset_content(root)
    assert sorted(resumed) == sorted(whole) and len(whole) == 24
    for case_id, (entry, arrays) in whole.items():
        assert resumed[case_id][0] == entry
        for (array, affine), (other_array, other_affine) in zip(arrays, resumed[case_id][1], strict=True):
            np.testing.assert_array_equal(other_array, array)
            np.testing.assert_array_equal(other_affine, affine)


# ---- evaluate and report: killed at several points, a result file exists only when whole ----------------------


def test_evaluate_killed_leaves_no_csv(volumes, tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for folder in (pred, gt):
        folder.mkdir()
    for index in range(24):
        mask = nib.load(volumes / f"mask_{index:02d}.nii.gz")
        nib.save(mask, gt / f"case_{index:02d}.nii.gz")
        shifted = np.roll(np.asarray(mask.dataobj), 2, axis=0)
        nib.save(nib.Nifti1Image(shifted, mask.affine, mask.header), pred / f"case_{index:02d}.nii.gz")
    reference = tmp_path / "reference.csv"
    arguments = ["covlight.evaluate", "--pred", pred, "--gt", gt, "--workers", "1"]
    seconds = min(timed(*arguments, "--out", reference), timed(*arguments, "--out", reference, "--force"))

    killed_mid_way = 0
    for fraction in (0.3, 0.6, 0.9):  # of the faster of two runs: the kills land while it runs, whatever the load
        out = tmp_path / f"killed-{fraction}.csv"
        killed_mid_way += kill_after([*arguments, "--out", out], seconds * fraction)
        assert not out.exists() or out.read_text() == reference.read_text()
    assert killed_mid_way, "every run finished before its kill: the test proved nothing"


def test_report_killed_leaves_no_report_md(tmp_path):
    rng = np.random.default_rng(3)
    for name in NAMES:
        for fold in FOLDS:
            make_run(tmp_path / "runs", name, fold, rows=fake_rows(rng, name, fold))
    reference = tmp_path / "reference"
    seconds = min(timed("covlight.report", tmp_path / "runs", "--out", reference),
                  timed("covlight.report", tmp_path / "runs", "--out", reference, "--force"))

    killed_mid_way = 0
    for fraction in (0.3, 0.6, 0.9):  # of the faster of two runs: the kills land while it runs, whatever the load
        out = tmp_path / f"killed-{fraction}"
        killed_mid_way += kill_after(["covlight.report", tmp_path / "runs", "--out", out], seconds * fraction)
        if (out / "report.md").exists():
            assert sorted(os.listdir(out)) == sorted(os.listdir(reference))
    assert killed_mid_way, "every run finished before its kill: the test proved nothing"
