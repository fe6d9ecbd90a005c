"""The benchmark's facts: subtasks derive their classes from the structures, the configs read them, columns."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from covlight.benchmark import (
    LABELS,
    STRUCTURE_OF_VALUE,
    STRUCTURES,
    SUBTASKS,
    ConfigError,
    check_combination,
    columns,
    structure_metric,
)
from tests.helpers.runs import compose_config


def test_subtasks_derive_label_values_and_classes():
    expected = {"lung": ([0, 1, 2], 3), "infection": ([0, 3], 2), "lung_infection": ([0, 1, 2, 3], 4)}
    assert {name: (s.label_values, s.num_classes) for name, s in SUBTASKS.items()} == expected
    for subtask in SUBTASKS.values():
        assert [STRUCTURE_OF_VALUE[value] for value in subtask.label_values[1:]] == list(subtask.structures)
    assert STRUCTURE_OF_VALUE[0] == "background" and LABELS["infection"] == STRUCTURES["infection"].label


@pytest.mark.parametrize("name", list(SUBTASKS))
def test_subtask_config_resolves_to_the_subtask(name):
    """conf/subtask/*.yaml writes no label value: structures, label_values and num_classes come from SUBTASKS."""
    cfg = compose_config([f"subtask={name}"])
    subtask = SUBTASKS[name]
    assert list(cfg.subtask.structures) == list(subtask.structures)
    assert list(cfg.subtask.label_values) == subtask.label_values
    assert cfg.subtask.num_classes == subtask.num_classes
    assert list(cfg.model.module.label_values) == subtask.label_values
    OmegaConf.resolve(cfg.model.module)  # as Hydra's instantiate does: the resolvers' lists must survive it
    assert list(cfg.model.module.label_values) == subtask.label_values


def test_columns_in_benchmark_order_and_back():
    assert columns(["infection", "left_lung"]) == ["L-lungDSC", "L-lung-1mm", "LesionDSC", "LesionNSD-3mm"]
    assert columns("right_lung", ("dsc", "hd95", "assd")) == ["R-lungDSC", "R-lungHD95", "R-lungASSD"]
    for name in STRUCTURES:
        for metric in ("dsc", "nsd", "hd95", "assd"):
            assert structure_metric(columns(name, (metric,))[0]) == (name, metric)
    with pytest.raises(ValueError, match="unknown structure"):
        columns(["lungs"])


def test_one_combination_rule_for_config_and_data():
    """The config check and the data layer's split raise the same error from the same rule."""
    with pytest.raises(ConfigError, match="partial-label loss"):
        check_combination("task3", "lung_infection", 0, "structseg")
    check_combination("task2", "infection", None, "msd")
    check_combination("task3", "lung", 4, "msd", "grouped")
