"""The slice recipe's (experiments/slices2d.yaml) whole path on real COVID-SemiSeg slices (../shared/data): import, train a few steps, predict
the pictures and the canonical dataset, evaluate. A smoke test of the path, not of the score (the slice study,
benchmarks/slices_study.py, measures that)."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
from PIL import Image

from covlight.evaluate import main as evaluate
from covlight.predict import main as predict
from covlight.prepare import main as prepare
from tests.helpers.runs import REPO

SLICES = ["0", "1", "2", "3", "4", "5"]


def test_real_slices_import_train_predict_evaluate(shared_data, tmp_path):
    source = shared_data / "covid_semiseg_train" / "TrainingSet" / "LungInfection-Train" / "Doctor-label"
    picked = tmp_path / "picked"
    for folder, suffix in (("Imgs", ".jpg"), ("GT", ".png")):
        (picked / folder).mkdir(parents=True)
        for name in SLICES:
            (picked / folder / f"{name}{suffix}").symlink_to(source / folder / f"{name}{suffix}")
    data = tmp_path / "data"
    assert prepare(["folder", "--src", str(picked), "--name", "semiseg6", "--images", "Imgs/*.jpg",
                    "--labels", "GT/*.png", "--label-map", "255:3", "--intensity", "8bit", "--dest", str(data)]) == 0

    outputs = tmp_path / "outputs"
    subprocess.run([sys.executable, "-m", "covlight", "experiment=slices2d", "task.name=semiseg6", "task.num_folds=3",
                    "fold=0", "model.batch_size=2", "trainer.max_epochs=1",
                    "data.sampling.batches_per_epoch=2", "data.sampling.num_workers=0",
                    "data.validation.patches=2", "logger=none", "print_config=false",
                    f"paths.data_dir={data}", f"paths.output_root={outputs}"], check=True, cwd=REPO)
    (run,) = (outputs / "semiseg6" / "infection" / "slices2d" / "fold0-seed0").iterdir()
    with open(run / "metrics.csv", newline="") as handle:
        tested = list(csv.DictReader(handle))
    assert len(tested) == 2  # 6 slices in 3 folds: fold 0 holds 2 out

    # the pictures themselves: PNG masks of each picture's own size, the probabilities beside them
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in SLICES[:2]:
        (pictures / f"{name}.jpg").symlink_to(source / "Imgs" / f"{name}.jpg")
    assert predict(["--run", str(run), "--input", str(pictures), "--output", str(tmp_path / "masks"),
                    "--probabilities", "--device", "cpu"]) == 0
    for name in SLICES[:2]:
        size = Image.open(source / "Imgs" / f"{name}.jpg").size
        mask = Image.open(tmp_path / "masks" / f"{name}.png")
        assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 3}
        probability = np.load(tmp_path / "masks" / "probabilities" / f"{name}_infection.npy")
        assert probability.shape == (size[1], size[0]) and 0 <= probability.min() <= probability.max() <= 1

    # the canonical dataset, then covlight.evaluate against its truth
    assert predict(["--run", str(run), "--input", str(data / "semiseg6"), "--output", str(tmp_path / "preds"),
                    "--device", "cpu"]) == 0
    scores = tmp_path / "scores.csv"
    assert evaluate(["--pred", str(tmp_path / "preds"), "--gt", str(data / "semiseg6"), "--structures", "infection",
                     "--out", str(scores), "--workers", "1"]) == 0
    with open(scores, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["Name"] for row in rows) == sorted(SLICES)
    assert all(0.0 <= float(row["LesionDSC"]) <= 1.0 for row in rows if row["LesionDSC"])
