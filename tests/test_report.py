"""The report (`python -m covlight.report`) on a fake 2-fold x 2-model task1 sweep built in tmp_path: numbers
recomputed from the per-case files, published baselines beside ours, coverage, plots, no silent overwrite."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from matplotlib.image import imread

from covlight.report.__main__ import main
from covlight.report.baselines import published_table
from covlight.report.collect import collect
from covlight.report.tables import EVAL_SETS, PUBLISHED_SETTINGS, published
from tests.helpers.run_folders import FOLDS, NAMES, NAN_CASE, fake_rows, make_run

STRUCTURE_COLUMNS = {("left_lung", "dsc"): "L-lungDSC", ("left_lung", "nsd"): "L-lung-1mm",
                     ("right_lung", "dsc"): "R-lungDSC", ("right_lung", "nsd"): "R-lung-1mm",
                     ("infection", "dsc"): "LesionDSC", ("infection", "nsd"): "LesionNSD-3mm"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The fake sweep, a failed and a running run, and the report written once (shared by the tests)."""
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(7)
    runs = {(name, fold): make_run(root, name, fold, rows=fake_rows(rng, name, fold))
            for name in NAMES for fold in FOLDS}
    failed = make_run(root, "unet2d", 2, state="failed", error="RuntimeError: out of memory")
    running = make_run(root, "unet3d", 3, state="running")
    out = tmp_path_factory.mktemp("report") / "report"
    assert main([str(root), "--out", str(out)]) == 0
    return {"root": root, "runs": runs, "failed": failed, "running": running, "out": out}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def cases_of(sweep, name, folds, dataset):
    """Per-case rows of the given method and folds, read straight from the run folders' metrics.csv."""
    rows = [row for fold in folds for row in read_csv(sweep["runs"][(name, fold)] / "metrics.csv")]
    return [row for row in rows if row["dataset"] == dataset]


def expected(rows, column):
    values = np.array([float(row[column]) for row in rows])
    finite = values[~np.isnan(values)]
    return 100 * finite.mean(), 100 * finite.std(), len(finite), int(np.isnan(values).sum())


def test_numbers_match_per_case_files(sweep):
    summary = read_csv(sweep["out"] / "summary.csv")
    tables = {"pooled": summary, "fold": read_csv(sweep["out"] / "per_fold.csv")}
    checked = 0
    for dataset in ("covid19_ct_seg", "mosmed"):
        for (structure, metric), column in STRUCTURE_COLUMNS.items():
            if dataset == "mosmed" and structure != "infection":
                continue
            for name in NAMES:
                select = {"name": name, "dataset": dataset, "structure": structure, "metric": metric}
                for table, folds in [("pooled", FOLDS), *(("fold", (fold,)) for fold in FOLDS)]:
                    match = [row for row in tables[table] if all(row[k] == v for k, v in select.items())
                             and (table == "pooled" or row["fold"] == str(folds[0]))]
                    assert len(match) == 1, (select, folds)
                    mean, std, n, nan = expected(cases_of(sweep, name, folds, dataset), column)
                    assert float(match[0]["mean"]) == pytest.approx(mean, abs=1e-9)
                    assert float(match[0]["std"]) == pytest.approx(std, abs=1e-9)
                    assert (int(match[0]["n"]), int(match[0]["nan"])) == (n, nan)
                    checked += 1
    assert checked == (6 + 2) * len(NAMES) * 3
    # MosMed annotates infection only: its all-NaN lung columns are left out, not reported as "NaN"
    assert {row["structure"] for row in summary if row["dataset"] == "mosmed"} == {"infection"}


def test_nan_case_excluded_and_counted(sweep):
    summary = read_csv(sweep["out"] / "summary.csv")
    row = next(r for r in summary if r["name"] == "unet2d" and r["dataset"] == "covid19_ct_seg"
               and r["structure"] == "infection" and r["metric"] == "dsc")
    assert (row["n"], row["nan"]) == ("31", "1")
    rows = cases_of(sweep, "unet2d", FOLDS, "covid19_ct_seg")
    assert [r["Name"] for r in rows if r["LesionDSC"] == "nan"] == [NAN_CASE[2]]
    rows = [r for r in rows if r["LesionDSC"] != "nan"]
    assert len(rows) == 31
    assert float(row["mean"]) == pytest.approx(100 * np.mean([float(r["LesionDSC"]) for r in rows]), abs=1e-9)
    line = next(line for line in (sweep["out"] / "report.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("| unet2d | – | 0, 1 |"))
    assert "(1 NaN)" in line


def test_published_baselines_beside_ours(sweep):
    summary = read_csv(sweep["out"] / "summary.csv")
    per_fold = read_csv(sweep["out"] / "per_fold.csv")
    report = (sweep["out"] / "report.md").read_text(encoding="utf-8")
    for (structure, metric), _ in STRUCTURE_COLUMNS.items():
        for dims in ("2D", "3D"):
            (cell,) = published_table(task="task1", model=f"{dims} U-Net (nnU-Net)", setting="Task1-Union",
                                      eval_set="COVID-19-CT-Seg", structure=structure, metric=metric.upper())
            rows = [r for r in summary if r["dataset"] == "covid19_ct_seg" and r["structure"] == structure
                    and r["metric"] == metric]
            key = dims.lower()
            for row in rows:
                assert float(row[f"published_{key}_mean"]) == cell["mean"]
                assert float(row[f"published_{key}_std"]) == cell["std"]
                assert float(row[f"diff_{key}"]) == pytest.approx(float(row["mean"]) - cell["mean"])
            assert f"{cell['mean']:.1f} ± {cell['std']:.1f}" in report
        for fold in FOLDS:
            (cell,) = published_table(task="task1", model="3D U-Net (nnU-Net)",
                                      setting="20pct_train_lung_and_infection_subtask", fold=f"Fold{fold}",
                                      eval_set="COVID-19-CT-Seg held-out(16)", structure=structure,
                                      metric=metric.upper())
            rows = [r for r in per_fold if r["dataset"] == "covid19_ct_seg" and r["fold"] == str(fold)
                    and r["structure"] == structure and r["metric"] == metric]
            assert len(rows) == 2 and all(float(r["published_3d_mean"]) == cell["mean"] for r in rows)
            assert all(r["published_2d_mean"] == "" for r in rows)  # no 2D per-fold numbers were published
            assert f"{cell['mean']:.2f} ± {cell['std']:.2f}" in report
    assert "| nnU-Net 2D (published) |" in report and "| unet3d − nnU-Net 3D |" in report


def test_coverage_missing_and_skipped(sweep):
    report = (sweep["out"] / "report.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"task1 · lung_infection · {name}: folds 2, 3, 4 missing (finished: folds 0, 1)" in report
    assert f"`{sweep['failed']}`: failed: RuntimeError: out of memory" in report
    assert f"`{sweep['running']}`: running (not finished)" in report
    cases = read_csv(sweep["out"] / "cases.csv")
    assert {row["run"] for row in cases} == {str(path) for path in sweep["runs"].values()}
    assert len(cases) == 4 * (16 + 50)


def test_plots_are_real_pngs(sweep):
    for name in ("boxplot_dsc.png", "boxplot_nsd.png"):
        path = sweep["out"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
        image = imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 600 and image[..., :3].std() > 0.05
        assert f"]({name})" in (sweep["out"] / "report.md").read_text(encoding="utf-8")


def test_refuses_to_overwrite_without_force(sweep, capsys):
    report = sweep["out"] / "report.md"
    before = report.read_text(encoding="utf-8")
    report.write_text(before + "\nmy notes\n", encoding="utf-8")
    assert main([str(sweep["root"]), "--out", str(sweep["out"])]) == 2
    assert "--force" in capsys.readouterr().err
    assert report.read_text(encoding="utf-8").endswith("my notes\n")
    assert main([str(sweep["root"]), "--out", str(sweep["out"]), "--force"]) == 0
    assert report.read_text(encoding="utf-8") == before
    assert not [p for p in sweep["out"].parent.iterdir() if p.name.startswith(".partial-")]


def test_no_finished_run_exits_with_one_message(tmp_path, capsys):
    make_run(tmp_path, "unet2d", 0, state="running")
    make_run(tmp_path, "unet2d", 1, state="failed", error="ValueError: bad")
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "no finished run" in err and "1 running" in err and "1 failed" in err
    assert not (tmp_path / "report").exists()


def test_newest_finished_run_of_an_identity_wins(tmp_path):
    rows = fake_rows(np.random.default_rng(0), "unet2d", 0)
    old = make_run(tmp_path, "unet2d", 0, rows=rows, stamp="2026-01-01_00-00-00")
    new = make_run(tmp_path, "unet2d", 0, rows=rows, stamp="2026-01-02_00-00-00")
    collection = collect([tmp_path])
    assert [run.path for run in collection.runs] == [new]
    reasons = [(skipped.path, skipped.reason) for skipped in collection.skipped]
    assert reasons == [(old, f"superseded by the newer finished run {new}")]


def test_custom_task_is_reported_without_published_rows(tmp_path):
    rows = [(f"slice_{i:02d}", "my_slices", [0.9, 0.8, 0.9, 0.8, 0.5, 0.4]) for i in range(3)]
    run = make_run(tmp_path, "unet2d", 0, rows=rows)
    status = json.loads((run / "status.json").read_text(encoding="utf-8"))
    status["identity"]["task"] = "my_slices"
    (run / "status.json").write_text(json.dumps(status), encoding="utf-8")
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    section = report.split("### my_slices", 1)[1].split("###", 1)[0]
    assert "my_slices (cross-validation held-out)" in section and "| unet2d |" in section
    assert "nnU-Net" not in section and "in-domain" not in section


def test_mapping_onto_published_rows():
    """Every setting/test-set string of the mapping names published rows; spot checks for tasks 2 and 3."""
    for (task, _, _, split), (summary_setting, fold_setting, training_source) in PUBLISHED_SETTINGS.items():
        for (eval_task, eval_split, _), (summary_eval, fold_eval) in EVAL_SETS.items():
            if (eval_task, eval_split) != (task, split):
                continue
            if summary_setting and summary_eval:
                assert published_table(task=task, setting=summary_setting, eval_set=summary_eval)
            if fold_setting and fold_eval:
                assert published_table(task=task, setting=fold_setting, training_source=training_source,
                                       eval_set=fold_eval)
    structseg_gtv = ("task2", "structseg", "infection", "official")
    nsclc_pe = ("task2", "nsclc", "infection", "official")
    assert published("3D", structseg_gtv, "covid19_ct_seg", "infection", "dsc") == (6.0, 12.7)  # summary
    assert published("3D", nsclc_pe, "nsclc_effusion", "infection", "dsc") == (64.35, 15.49)  # in-domain
    assert published("2D", nsclc_pe, "nsclc_effusion", "infection", "dsc") == (None, None)
    task3_nsclc, task3_msd = ("task3", "nsclc", "lung", "official"), ("task3", "msd", "infection", "official")
    assert published("2D", task3_nsclc, "mosmed", "left_lung", "nsd") == (None, None)  # MosMed: lesions only
    assert published("2D", task3_msd, "mosmed", "infection", "nsd") == (29.0, 24.5)
    assert published("3D", task3_nsclc, "nsclc_lung", "left_lung", "dsc", 2, pooled=False) == (95.35, 4.857)
    assert published("3D", task3_nsclc, "structseg_lung", "left_lung", "dsc") == (None, None)  # not its own
    task2_msd_lung = ("task2", "msd", "lung", "official")  # published as "-" / no config allows it
    assert published("3D", task2_msd_lung, "covid19_ct_seg", "left_lung", "dsc") == (None, None)
    assert published("3D", ("task2", "all", "lung", "official"), "covid19_ct_seg", "left_lung", "dsc") == (
        None, None)
    task1_lung = ("task1", None, "lung", "official")
    assert published("2D", task1_lung, "covid19_ct_seg", "left_lung", "dsc", 0, pooled=False) == (None, None)
    assert published("3D", task1_lung, "covid19_ct_seg", "left_lung", "dsc", fold=4, pooled=False) == (
        88.33, 75.97)  # the published typo, as printed


def seeded_run(root, name, fold, rows, effort=None):
    """A semi-automatic run folder: its config sets data.interaction and it wrote annotation.json (`effort`)."""
    path = make_run(root, name, fold, rows=rows)
    (path / "config.yaml").write_text("data:\n  interaction: {slices: 3, mode: scribbles, seed: 0}\n",
                                      encoding="utf-8")
    if effort is not None:
        (path / "annotation.json").write_text(json.dumps(effort), encoding="utf-8")
    return path


def test_semi_automatic_rows_show_their_annotation_cost_beside_networks(tmp_path):
    rng = np.random.default_rng(3)
    for fold, strokes in ((0, 40.0), (1, 50.0)):
        make_run(tmp_path, "unet2d", fold, rows=fake_rows(rng, "unet2d", fold))
        effort = {"slices_per_scan": 3.0, "strokes_per_scan": strokes,
                  "cases": {"coronacases_001": {"mode": "scribbles", "slices": 3, "strokes": int(strokes)}}}
        seeded_run(tmp_path, "random_walker_scribbles3", fold, fake_rows(rng, "random_walker_scribbles3", fold), effort)
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    summary = read_csv(tmp_path / "report" / "summary.csv")
    walker = {(r["interaction"], r["slices_per_scan"], r["strokes_per_scan"]) for r in summary
              if r["name"] == "random_walker_scribbles3"}
    network = {(r["interaction"], r["slices_per_scan"]) for r in summary if r["name"] == "unet2d"}
    assert walker == {("scribbles", "3.0", "45.0")} and network == {("", "")}
    report = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| method | drawn per test scan | folds | runs |" in report
    assert "| random_walker_scribbles3 | 3 slices, 45.0 strokes | 0, 1 | 2 |" in report
    assert "| unet2d | – | 0, 1 | 2 |" in report
    per_fold = read_csv(tmp_path / "report" / "per_fold.csv")
    assert {r["strokes_per_scan"] for r in per_fold if r["name"] == "random_walker_scribbles3"} == {"40.0", "50.0"}


def test_semi_automatic_run_without_its_annotation_cost_is_refused(tmp_path):
    rows = fake_rows(np.random.default_rng(0), "random_walker_scribbles3", 0)
    missing = seeded_run(tmp_path / "a", "random_walker_scribbles3", 0, rows)
    damaged = seeded_run(tmp_path / "b", "random_walker_scribbles3", 0, rows, effort={"slices_per_scan": 3.0})
    for path, reason in ((missing, "a semi-automatic run without"), (damaged, "unreadable")):
        (skipped,) = collect([path]).skipped
        assert skipped.refused and skipped.reason.startswith(f"{reason} {path / 'annotation.json'}")
