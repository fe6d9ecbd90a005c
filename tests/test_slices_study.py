"""The slice study's summary (benchmarks/slices_study.py --summary-only) from result files: the paired differences
it reports, and its figure."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slices_study():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import slices_study
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return slices_study


def write_result(study, work: Path, arm: str, fold: int, seed: int, per_image: dict[str, float]) -> None:
    """A result file whose images have a flat Dice curve at the given value (so its threshold-averaged Dice is it)."""
    images = [{"case": case, "dice_per_threshold": [value] * len(study.THRESHOLDS), "hard_dice": value,
               "dsc": value, "nsd": value} for case, value in per_image.items()]
    result = {"images": images, "arm": arm, "fold": fold, "seed": seed, "steps": 300, "batch_size": 8,
              "train_seconds": 10.0, **{key: float(np.mean(list(per_image.values()))) for key in ("threshold_dice", "hard_dice")}}
    path = study.result_file(work, arm, fold, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_summary_pairs_images_and_draws_the_figure(slices_study, tmp_path):
    """A summary needs the result files only (not the shared data, nor nnU-Net's environment for its arm); it pairs
    only images both arms scored."""
    work = tmp_path / "work"
    narrow = {0: {"1": 0.5, "2": 0.7}, 1: {"3": 0.4, "4": 0.6}}
    resize = {0: {"1": 0.6, "2": 0.7}, 1: {"3": 0.6}}  # image 4 of fold 1 missing: it is not paired
    for fold, images in narrow.items():
        write_result(slices_study, work, "narrow", fold, 0, images)
    for fold, images in resize.items():
        write_result(slices_study, work, "narrow_resize", fold, 0, images)
    out = tmp_path / "summary.json"
    code = slices_study.main(["--shared", str(tmp_path / "absent"), "--work", str(work), "--summary-only", "--folds", "0,1,2",
                              "--seeds", "0", "--arms", "narrow,narrow_resize,wide,nnunet_v2", "--out", str(out)])
    assert code == 0
    arms = json.loads(out.read_text())["arms"]
    difference = arms["narrow_resize"]["vs_narrow"]
    assert difference["pairs"] == 3
    assert difference["threshold_dice_difference"] == pytest.approx((0.1 + 0.0 + 0.2) / 3, abs=1e-4)
    assert difference["ci95"][0] <= difference["threshold_dice_difference"] <= difference["ci95"][1]
    assert arms["narrow_resize"]["vs_base"]["arm"] == "narrow"
    assert arms["narrow"]["threshold_dice_mean"] == pytest.approx(0.55, abs=1e-4)
    assert arms["narrow"]["missing"] == ["fold2-seed0"]
    assert arms["wide"]["per_run"] == {}  # no results: in the JSON, left out of the figure
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
