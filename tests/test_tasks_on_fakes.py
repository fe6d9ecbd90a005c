"""Tasks 2 and 3 end to end for every source, on miniature fakes of the official downloads imported with
`covlight.prepare` (a few cases per source: the runs use data.cases.missing=skip)."""

from __future__ import annotations

import csv
import warnings

import pytest

from covlight.prepare import main as prepare
from covlight.splits import COVID_CASES, MOSMED, load_split_file
from covlight.train import run
from tests.helpers import official_fakes as fakes
from tests.helpers.runs import FAST, TINY_2D, compose_config


def first_ids(split_file: str, train: int, val: int) -> list[str]:
    (lists,) = load_split_file(split_file)
    return lists["train"][:train] + lists["val"][:val]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    root = tmp_path_factory.mktemp("data")
    structseg = sorted({int(c.split("_")[1]) for c in first_ids("Task200_StructSegLung_datasplit.json", 2, 1)})
    msd = first_ids("Task202_MSD_LungTumor_datasplit.json", 2, 1)
    msd_archive, msd_masks = fakes.msd_download(downloads, msd)
    commands = [
        ["covid19_ct_seg", "--src", fakes.covid_download(downloads, list(COVID_CASES))],
        ["mosmed", "--src", fakes.mosmed_download(downloads, ["study_0255", "study_0256"], {})],
        ["structseg", "--src", fakes.structseg_download(downloads, structseg)],
        ["nsclc", "--src", fakes.nsclc_download(downloads)],
        ["msd_lung", "--src", msd_archive, "--lung-masks", msd_masks],
    ]
    for command in commands:
        assert prepare([str(a) for a in [*command, "--dest", root]]) == 0, command
    return root


def run_task(root, tmp_path, *overrides) -> list[dict]:
    cfg = compose_config([*overrides, *TINY_2D, *FAST, "logger=none", "data.cases.missing=skip",
                          f"paths.data_dir={root}", f"paths.output_dir={tmp_path}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(cfg)
    with open(tmp_path / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


IN_DOMAIN = {"structseg_lung", "structseg_gtv", "nsclc_lung", "nsclc_effusion", "msd_lung_tumour", "msd_lung"}
SETTINGS = [("structseg", "lung"), ("structseg", "infection"), ("nsclc", "lung"), ("nsclc", "infection"),
            ("msd", "infection"), ("all", "lung"), ("all", "infection")]


@pytest.mark.slow
@pytest.mark.parametrize(("source", "subtask"), SETTINGS)
def test_task2_then_task3_for_every_source(imported, tmp_path, source, subtask):
    rows = run_task(imported, tmp_path / "task2", "task=task2", f"source={source}", f"subtask={subtask}")
    datasets = {row["dataset"] for row in rows} - IN_DOMAIN  # in-domain held-out cases are scored too
    assert sum(row["dataset"] == "covid19_ct_seg" for row in rows) == 20  # all 20 COVID cases are test cases
    assert datasets == ({"covid19_ct_seg", MOSMED} if subtask == "infection" else {"covid19_ct_seg"})
    rows = run_task(imported, tmp_path / "task3", "task=task3", f"source={source}", f"subtask={subtask}", "fold=2")
    covid = [row["Name"] for row in rows if row["dataset"] == "covid19_ct_seg"]
    assert len(covid) == 16 and not set(covid) & set(load_split_file("Task1_COVID_datasplit.json")[2]["train"])
    for row in rows:
        if row["dataset"] == MOSMED:  # infection-only truth: no lung is ever scored on MosMed
            assert row.get("L-lungDSC", "nan") == "nan"


@pytest.mark.slow
def test_task3_msd_lungs_use_the_separately_released_masks(imported, tmp_path):
    rows = run_task(imported, tmp_path, "task=task3", "source=msd", "subtask=lung", "fold=0")
    assert sum(row["dataset"] == "covid19_ct_seg" for row in rows) == 16
    assert {row["dataset"] for row in rows} <= {"covid19_ct_seg", "msd_lung"}
