"""Annotation-efficiency curves: the budgets swept, the points and their 95% intervals, the report's section, and
`python -m covlight.efficiency` end to end on tiny phantoms (resumable)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from scipy import stats

from covlight.efficiency import main as efficiency
from covlight.efficiency import points
from covlight.report.__main__ import main as report
from covlight.report.efficiency import budget_name, drawn_lines, interval, method_of
from tests.helpers.runs import REPO

SCORES = {  # (cases, slices per case) -> the LesionDSC of the runs' two test cases, per seed
    (None, 1): [(0.2, 0.4), (0.3, 0.5), (0.1, 0.3)],
    (None, None): [(0.7, 0.9), (0.8, 0.8), (0.6, 0.8)],
    (1, None): [(0.5, 0.5), (0.4, 0.6), (0.5, 0.7)],
}
DEPTH = 20  # slices per case


def test_budgets_swept():
    assert points([1, 2], [1, None], cross=False) == [(1, None), (2, None), (None, 1), (None, None)]
    assert points([1, None], [5], cross=True) == [(1, 5), (None, 5)]
    assert method_of(budget_name("mean_teacher_2d", 2, None)) == "mean_teacher_2d"


def test_interval_is_the_t_interval_of_the_run_scores():
    mean, low, high = interval([0.3, 0.4, 0.2])
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert math.isclose(mean, 0.3) and math.isclose(low, 0.3 - half) and math.isclose(high, 0.3 + half)
    assert math.isnan(interval([0.5])[1])


def fake_run(root, cases, slices, seed, values, budget=True):
    name = budget_name("unet2d", cases, slices)
    path = root / "tiny" / "infection" / name / f"fold0-seed{seed}" / "2026-01-01_00-00-00"
    path.mkdir(parents=True)
    identity = {"name": name, "fold": 0, "seed": seed, "task": "tiny", "source": None, "subtask": "infection",
                "model": "unet2d"}
    (path / "status.json").write_text(json.dumps({"state": "finished", "identity": identity}))
    (path / "config.yaml").write_text(yaml.safe_dump({"task": {"name": "tiny", "has_folds": True, "num_folds": 2}}))
    rows = "".join(f"case{i},tiny,{v!r},{v!r}\n" for i, v in enumerate(values))
    (path / "metrics.csv").write_text("Name,dataset,LesionDSC,LesionNSD-3mm\n" + rows)
    if budget:
        labelled = 1 if cases else 3
        (path / "annotation_budget.json").write_text(json.dumps({
            "labelled_cases": labelled, "annotated_slices": labelled * (slices or DEPTH), "cases": cases,
            "slices_per_case": slices, "strategy": "evenly", "seed": seed}))


def test_the_plot_leaves_out_a_line_through_the_full_label_point_alone():
    def point(cases, slices):
        return {"labelled_cases": cases, "slices_per_case": slices}

    cases_swept = {("unet", "labelled cases"): [point(5, "all"), point("all", "all")],
                   ("unet", "slices per case"): [point("all", "all")],
                   ("mt", "labelled cases"): [point(5, "all"), point("all", "all")],
                   ("mt", "slices per case"): [point("all", "all")]}
    assert sorted(drawn_lines(cases_swept)) == [("mt", "labelled cases"), ("unet", "labelled cases")]
    both_swept = {**cases_swept, ("unet", "slices per case"): [point("all", 1), point("all", "all")]}
    assert ("unet", "slices per case") in drawn_lines(both_swept)
    full_labels_only = {("unet", "labelled cases"): [point("all", "all")],
                        ("unet", "slices per case"): [point("all", "all")]}
    assert len(drawn_lines(full_labels_only)) == 2  # nothing else to show the point on


def test_report_gains_the_efficiency_plot_and_table(tmp_path, capsys):
    for (cases, slices), per_seed in SCORES.items():
        for seed, values in enumerate(per_seed):
            fake_run(tmp_path / "runs", cases, slices, seed, values)
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--minutes-per-slice", "2"]) == 0
    with open(tmp_path / "report" / "efficiency.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["metric"] == "dsc"]
    by_point = {(r["line"], r["labelled_cases"], r["slices_per_case"]): r for r in rows}
    assert set(by_point) == {("slices per case", "all", "1"), ("slices per case", "all", "all"),
                             ("labelled cases", "all", "all"), ("labelled cases", "1", "all")}
    one_slice = by_point[("slices per case", "all", "1")]
    run_means = [0.3, 0.4, 0.2]  # each run's mean over its test cases
    mean, low, high = interval(run_means)
    assert math.isclose(float(one_slice["mean"]), mean) and math.isclose(float(one_slice["ci95_low"]), low)
    assert float(one_slice["annotated_slices"]) == 3 and float(one_slice["minutes"]) == 6
    assert one_slice["method"] == "unet2d" and one_slice["runs"] == "3"
    assert float(by_point[("labelled cases", "1", "all")]["annotated_slices"]) == DEPTH
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Annotation efficiency" in markdown and "![annotation efficiency](efficiency.png)" in markdown
    assert f"| {100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}] | 3 |" in markdown
    assert (tmp_path / "report" / "efficiency.png").stat().st_size > 10_000


def test_no_section_without_a_budget(tmp_path, capsys):
    fake_run(tmp_path / "runs", None, None, 0, (0.5, 0.6))
    fake_run(tmp_path / "runs", None, 1, 0, (0.5, 0.6), budget=False)
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert not (tmp_path / "report" / "efficiency.csv").exists()
    assert "Annotation efficiency" not in (tmp_path / "report" / "report.md").read_text()


TINY = ["task=custom", "task.name=tiny", "task.num_folds=2", "subtask=lung", "logger=none", "model=unet2d",
        "model.patch_size=[32,32,1]", "model.batch_size=2", "model.module.net.features_per_stage=[8,16,32]",
        "model.module.net.strides=[1,2,2]", "trainer=debug", "data.sampling.batches_per_epoch=2",
        "data.sampling.samples_per_volume=2", "data.sampling.patch_buffer=4", "data.sampling.num_workers=0",
        "data.validation.patches_per_case=1", "callbacks.case_scoring.overlay_cases=0"]


@pytest.mark.slow
def test_efficiency_command_runs_each_point_once_and_resumes(tmp_path, capsys, monkeypatch):
    """Two budgets (1 case with all its slices; 2 slices of each case) x one seed on 4 tiny phantoms (2 folds: 2
    training, 2 test cases): two runs, the report with its efficiency section; the same command again runs nothing.
    (~2 min on 2 loaded cores.)"""
    from covlight.data.synthetic import write_phantom_dataset

    write_phantom_dataset(tmp_path / "data" / "tiny", cases=4, seed=0, size="small", progress=False)
    monkeypatch.chdir(REPO)
    argv = ["--out", str(tmp_path / "study"), "--cases", "1", "--slices", "2", "--seeds", "0", "--folds", "0",
            *TINY, f"paths.data_dir={tmp_path / 'data'}"]
    assert efficiency(argv) == 0
    out = capsys.readouterr().out
    assert "2 runs, 0 finished earlier, 2 to run" in out
    runs = sorted((tmp_path / "study" / "runs" / "tiny" / "lung").iterdir())
    assert [r.name for r in runs] == ["unet2d-budget-c1-sall", "unet2d-budget-call-s2"]
    budget = json.loads(next(runs[1].glob("fold0-seed0/*/annotation_budget.json")).read_text())
    assert budget["labelled_cases"] == 2 and budget["annotated_slices"] == 4
    assert next(runs[1].glob("fold0-seed0/*/metrics_training_slices.csv")).is_file()
    assert "## Annotation efficiency" in (tmp_path / "study" / "report" / "report.md").read_text()
    assert efficiency(argv) == 0
    assert "2 runs, 2 finished earlier, 0 to run" in capsys.readouterr().out
