"""`covlight.suggest`: what to annotate next. Scores (entropy, ensemble disagreement, MC dropout, random), the
diversity rule, the CSV and the sheet, and every bad input it refuses.

The runs are made in-process with one training step on task 1 fold 0's 4 training phantoms (as in
tests/test_predict.py); the pool is 3 small phantoms under other case ids, imported without labels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from covlight import suggest
from covlight.config import write_status
from covlight.data.canonical import affine_from_spacing, hu_to_0_255, write_case, write_dataset_json
from covlight.data.synthetic import make_phantom
from covlight.splits import COVID, official_split
from covlight.train import resolved_container
from tests.helpers.runs import FAST, TINY_2D, compose_config

FOLD0 = official_split("task1", "infection", 0)
POOL = "phantom_pool"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(phantom_root, tmp_path_factory) -> dict[str, Path]:
    """Finished 2D infection runs of one training step: seeds 0 and 1, seed 0 with dropout, and a lung run."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, seed, extra in (("a", 0, ["subtask=infection"]), ("b", 1, ["subtask=infection"]),
                              ("dropout", 0, ["subtask=infection", "model.module.net.dropout=0.2"]),
                              ("lung", 0, ["subtask=lung"])):
        run_dir = root / name
        cfg = compose_config(["task=task1", *extra, *TINY_2D, *FAST, "logger=none", f"seed={seed}",
                              f"paths.data_dir={phantom_root}", f"paths.output_dir={run_dir}"])
        pl.seed_everything(seed, verbose=False)
        trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        config = {k: v for k, v in resolved_container(cfg).items() if k != "hydra"}
        split = {"_target_": "covlight.splits.Split", "_convert_": "all", "train": FOLD0.train, "val": {},
                 "test": {}}
        trainer.fit(instantiate(cfg.model.module), datamodule=instantiate({**config["data"], "split": split}))
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
        write_status(run_dir, "finished")
        made[name] = run_dir
    return made


@pytest.fixture(scope="module")
def pool(phantom_root) -> Path:
    """3 small phantoms under ids no split names, imported without labels (annotated: none)."""
    root = phantom_root / POOL
    if not (root / "dataset.json").is_file():
        entries = {}
        for index in range(1, 4):
            phantom = make_phantom(f"pool_{index:03d}", seed=3, size="small")
            entries[f"pool_{index:03d}"] = write_case(root, f"pool_{index:03d}", hu_to_0_255(phantom.image_hu), None,
                                                      affine_from_spacing(phantom.spacing), intensity="hu")
        write_dataset_json(root, POOL, entries, [])
    return root


def run_suggest(runs: list[Path], pool: Path, out: Path, *extra: str) -> int:
    arguments = [a for run in runs for a in ("--run", str(run))]
    return suggest.main([*arguments, "--pool", str(pool), "--out", str(out), *extra])


def test_entropy_slices_csv_and_sheet(runs, pool, tmp_path):
    out = tmp_path / "out"
    assert run_suggest([runs["a"]], pool, out, "--budget", "6", "--sheet", "2") == 0
    chosen = suggest.read_csv(out / "suggestions.csv")
    assert len(chosen) == 6
    assert [s.score for s in chosen] == sorted((s.score for s in chosen), reverse=True)
    assert all(s.case.startswith("pool_") and s.slice is not None and 0 < s.score <= 1 for s in chosen)
    assert "softmax entropy" in chosen[0].why and "rank 1 of" in chosen[0].why
    for s in chosen:  # the diversity rule: default --min-gap 5 within a case
        others = [o.slice for o in chosen if o.case == s.case and o is not s]
        assert all(abs(s.slice - z) >= 5 for z in others)
    sheet = Image.open(out / "suggestions.png")
    assert sheet.size[0] > 300 and sheet.size[1] > 300

    # the scores are the definition's: mean entropy / ln 2 over the slice's voxels of foreground probability >= 0.1
    maps = suggest.case_maps(suggest.load_runs(suggest.parse_args(["--run", str(runs["a"]), "--pool", "x",
                                                                   "--budget", "1"])),
                             suggest.read_dataset(pool), chosen[0].case, "entropy", 1, 0)
    z = chosen[0].slice
    relevant = maps.relevant[:, :, z]
    assert relevant.any()
    assert chosen[0].score == pytest.approx(float(maps.uncertainty[:, :, z][relevant].mean()), rel=1e-5)

    assert run_suggest([runs["a"]], pool, out, "--budget", "6") == 2  # never overwritten silently


def test_slice_scores_average_only_the_foreground_relevant_voxels():
    uncertainty = np.zeros((4, 4, 3), np.float32)
    relevant = np.zeros((4, 4, 3), bool)
    uncertainty[:, :, 0] = 0.9  # uncertain, but nowhere the foreground is likely: scores 0
    uncertainty[0, :, 1], relevant[0, :, 1] = 0.5, True
    uncertainty[1, :, 1] = 0.9  # not relevant: left out of the mean
    relevant[:, :, 2] = True
    uncertainty[:2, :, 2] = 0.2
    maps = suggest.CaseMaps(np.zeros((4, 4, 3)), np.zeros((4, 4, 3), np.uint8), uncertainty, relevant)
    scores, counts = maps.slice_scores()
    np.testing.assert_allclose(scores, [0.0, 0.5, 0.1])
    np.testing.assert_array_equal(counts, [0, 4, 16])
    (case,) = suggest.scores_of("c", maps, "case", "why")
    assert case.slice is None and case.score == pytest.approx((0.5 * 4 + 0.2 * 8) / 20)


def test_diversity_rule_skips_neighbours_and_caps_slices_per_case():
    scored = [suggest.Suggestion("a", z, 1.0 - z / 100, "") for z in range(20)] + [
        suggest.Suggestion("b", 0, 0.5, "")]
    picked = suggest.diverse(scored, 4, "slice", min_gap=5, per_case=0)
    assert [(s.case, s.slice) for s in picked] == [("a", 0), ("a", 5), ("a", 10), ("a", 15)]
    picked = suggest.diverse(scored, 3, "slice", min_gap=1, per_case=2)
    assert [(s.case, s.slice) for s in picked] == [("a", 0), ("a", 1), ("b", 0)]
    assert len(suggest.diverse(scored, 10, "slice", min_gap=8, per_case=0)) == 4  # a: 0, 8, 16; b: 0


def test_the_diversity_rule_that_leaves_too_few_says_which_option_to_lower(runs, pool, tmp_path, capsys):
    assert run_suggest([runs["a"]], pool, tmp_path / "o", "--budget", "5", "--min-gap", "100") == 2
    assert "--min-gap 100" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ensemble_disagreement_is_zero_for_identical_members(runs, pool, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(runs["a"], twin)
    assert run_suggest([runs["a"], twin], pool, tmp_path / "same", "--budget", "3", "--strategy", "ensemble",
                       "--sheet", "0") == 0
    assert all(s.score == pytest.approx(0, abs=1e-6) for s in suggest.read_csv(tmp_path / "same" / "suggestions.csv"))
    assert run_suggest([runs["a"], runs["b"]], pool, tmp_path / "two", "--budget", "3", "--strategy", "ensemble",
                       "--sheet", "0") == 0
    chosen = suggest.read_csv(tmp_path / "two" / "suggestions.csv")
    assert chosen[0].score > 1e-4 and "mutual information of 2 runs" in chosen[0].why


def test_mc_dropout_needs_dropout_and_is_seeded(runs, pool, tmp_path, capsys):
    assert run_suggest([runs["a"]], pool, tmp_path / "x", "--budget", "2", "--strategy", "mc_dropout") == 2
    error = capsys.readouterr().err
    assert str(runs["a"] / "config.yaml") in error and "model.module.net.dropout=0.1" in error
    for out in ("one", "again"):
        assert run_suggest([runs["dropout"]], pool, tmp_path / out, "--budget", "4", "--strategy", "mc_dropout",
                           "--samples", "3", "--unit", "case", "--budget", "2", "--sheet", "1") == 0
    first = (tmp_path / "one" / "suggestions.csv").read_text()
    assert first == (tmp_path / "again" / "suggestions.csv").read_text()
    chosen = suggest.read_csv(tmp_path / "one" / "suggestions.csv")
    assert [s.slice for s in chosen] == [None, None] and chosen[0].score > 0
    assert "3 dropout passes" in chosen[0].why


def test_random_is_seeded(runs, pool, tmp_path):
    texts = []
    for out, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run_suggest([runs["a"]], pool, tmp_path / out, "--budget", "5", "--strategy", "random",
                           "--seed", seed, "--sheet", "0") == 0
        texts.append((tmp_path / out / "suggestions.csv").read_text())
    assert texts[0] == texts[1] != texts[2]
    assert "random draw (seed 1)" in texts[0]


def test_refuses_a_budget_larger_than_the_pool(runs, pool, tmp_path, capsys):
    assert run_suggest([runs["a"]], pool, tmp_path / "o", "--budget", "4", "--unit", "case") == 2
    error = capsys.readouterr().err
    assert "--budget 4 is larger than the pool" in error and str(pool / "dataset.json") in error
    assert "Lower --budget to 3" in error


def test_refuses_a_pool_holding_a_test_case_of_the_run(runs, phantom_root, tmp_path, capsys):
    covid = phantom_root / COVID
    assert run_suggest([runs["a"]], covid, tmp_path / "o", "--budget", "2") == 2
    error = capsys.readouterr().err
    assert "test case(s) of the run" in error and str(covid / "dataset.json") in error and "--cases" in error
    assert sorted(FOLD0.test[COVID])[0] in error
    # one test case among training cases is still refused; training cases alone leave nothing to suggest
    assert run_suggest([runs["a"]], covid, tmp_path / "o", "--budget", "1", "--unit", "case", "--cases",
                       FOLD0.train[COVID][0], FOLD0.test[COVID][3]) == 2
    assert FOLD0.test[COVID][3] in capsys.readouterr().err
    infection = tmp_path / "infection" / COVID  # the same cases, annotated for the run's structures only
    shutil.copytree(covid, infection)
    write_dataset_json(infection, COVID, suggest.read_dataset(covid).cases, ["infection"])
    assert run_suggest([runs["a"]], infection, tmp_path / "o", "--budget", "1", "--cases", *FOLD0.train[COVID]) == 2
    assert "holds no unlabelled case" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_refuses_a_run_of_other_structures_than_the_pool(runs, phantom_root, pool, tmp_path, capsys):
    lungs = phantom_root / "lung_pool"
    shutil.copytree(pool, lungs, dirs_exist_ok=True)
    write_dataset_json(lungs, "lung_pool", suggest.read_dataset(pool).cases, ["left_lung", "right_lung"])
    assert run_suggest([runs["a"]], lungs, tmp_path / "o", "--budget", "2") == 2
    error = capsys.readouterr().err
    assert "segments ['infection']" in error and str(lungs / "dataset.json") in error
    assert run_suggest([runs["lung"]], lungs, tmp_path / "o", "--budget", "2", "--sheet", "0") == 0


def test_refuses_an_ensemble_strategy_with_one_run(runs, pool, tmp_path, capsys):
    assert run_suggest([runs["a"]], pool, tmp_path / "o", "--budget", "2", "--strategy", "ensemble") == 2
    assert "add --run for each member" in capsys.readouterr().err
