"""The benchmark's facts (Ma et al., COVID-19-CT-Seg-Benchmark), written once, below every other module.

Labels, the scored structures with their NSD tolerance and CSV columns, dataset names and official case ids,
tasks, sources, subtasks and which combinations of them exist, and the tables that map a (source, subtask) to
its official split file. The case lists themselves stay data files in `covlight/resources/splits/`. This module
imports nothing from covlight but its error class, so data, metrics, config, training and the report all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from covlight.errors import ConfigError

# ------------------------------------------------------------------------------------------------- labels
# Canonical label values of every label map covlight writes or reads.
LABELS = {"background": 0, "left_lung": 1, "right_lung": 2, "infection": 3}
STRUCTURE_OF_VALUE = {value: name for name, value in LABELS.items()}
# "Not annotated": a voxel of a sparsely annotated case whose class nobody drew (README "Sparse annotations"). Loss,
# sampler and validation ignore it; it is never a class, and a case holding it is never a test case.
UNKNOWN_LABEL = 255


@dataclass(frozen=True)
class Structure:
    """A scored structure: its canonical label, NSD tolerance and the benchmark's CSV column names."""

    label: int
    tolerance_mm: float
    dsc_column: str
    nsd_column: str

    def column(self, metric: str) -> str:
        """The CSV column of `metric` (one of `METRICS`); HD95 and ASSD, not the benchmark's, follow its DSC
        column's naming: L-lungHD95, LesionASSD."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        named = {"dsc": self.dsc_column, "nsd": self.nsd_column}
        return named.get(metric) or self.dsc_column.removesuffix("DSC") + metric.upper()



# In the benchmark's column order (its evaluation script's CSV).
STRUCTURES = MappingProxyType({
    "left_lung": Structure(label=1, tolerance_mm=1.0, dsc_column="L-lungDSC", nsd_column="L-lung-1mm"),
    "right_lung": Structure(label=2, tolerance_mm=1.0, dsc_column="R-lungDSC", nsd_column="R-lung-1mm"),
    "infection": Structure(label=3, tolerance_mm=3.0, dsc_column="LesionDSC", nsd_column="LesionNSD-3mm"),
})
METRICS_FILE = "metrics.csv"  # a run's per-case scores
ANNOTATION_FILE = "annotation.json"  # a semi-automatic run's annotation effort per test case (its cost in the report)
ANNOTATION_BUDGET_FILE = "annotation_budget.json"  # what a run's training labels cost (cases, annotated slices)
BENCHMARK_METRICS = ("dsc", "nsd")  # the benchmark's columns, per structure
METRICS = (*BENCHMARK_METRICS, "hd95", "assd")  # what covlight.evaluate can add (medpy's HD95 and ASSD)


def ordered_structures(names) -> list[str]:
    """`names` checked and put in the benchmark's column order."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in STRUCTURES]
    if unknown:
        raise ValueError(f"unknown structure(s) {unknown}; known: {list(STRUCTURES)}")
    return [name for name in STRUCTURES if name in names]


def columns(names, metrics=BENCHMARK_METRICS) -> list[str]:
    """The CSV columns of the given structures and metrics, structure by structure in the benchmark's order."""
    return [STRUCTURES[name].column(metric) for name in ordered_structures(names) for metric in metrics]


def structure_metric(column: str) -> tuple[str, str]:
    """(structure, metric) of a CSV column: "LesionNSD-3mm" -> ("infection", "nsd")."""
    for name, structure in STRUCTURES.items():
        for metric in METRICS:
            if column == structure.column(metric):
                return name, metric
    raise KeyError(column)


# ----------------------------------------------------------------------------------------------- subtasks
@dataclass(frozen=True)
class Subtask:
    """What one model segments (after nnU-Net's LabelManager): its structures, and from them the model's classes.

    Class k of the model is canonical label `label_values[k]`; class 0 is the background.
    """

    name: str
    structures: tuple[str, ...]

    @property
    def label_values(self) -> list[int]:
        return label_values(self.structures)

    @property
    def num_classes(self) -> int:
        return len(self.label_values)


def label_values(structures) -> list[int]:
    """The background and the canonical label of each structure, in the benchmark's order."""
    return [LABELS["background"], *(STRUCTURES[name].label for name in ordered_structures(structures))]


SUBTASKS = MappingProxyType({
    "lung": Subtask("lung", ("left_lung", "right_lung")),
    "infection": Subtask("infection", ("infection",)),
    "lung_infection": Subtask("lung_infection", ("left_lung", "right_lung", "infection")),  # the paper's "Union"
})

# --------------------------------------------------------------------------------------- datasets, cases
COVID = "covid19_ct_seg"
MOSMED = "mosmed"
COVID_CASES: tuple[str, ...] = (
    "coronacases_001",
    "coronacases_002",
    "coronacases_003",
    "coronacases_004",
    "coronacases_005",
    "coronacases_006",
    "coronacases_007",
    "coronacases_008",
    "coronacases_009",
    "coronacases_010",
    "radiopaedia_10_85902_1",
    "radiopaedia_10_85902_3",
    "radiopaedia_14_85914_0",
    "radiopaedia_27_86410_0",
    "radiopaedia_29_86490_1",
    "radiopaedia_29_86491_1",
    "radiopaedia_36_86526_0",
    "radiopaedia_40_86625_0",
    "radiopaedia_4_85506_1",
    "radiopaedia_7_85703_0",
)
# Two scans of one patient: official folds 2 and 4 put one in training and the other in the test set.
TWINS: tuple[str, str] = ("radiopaedia_10_85902_1", "radiopaedia_10_85902_3")
# MosMedData COVID19_1110: the 50 CT-1 studies with infection masks, a test set of every infection model.
MOSMED_CASES: tuple[str, ...] = tuple(f"study_{n:04d}" for n in range(255, 305))
MOSMED_SUBTASKS = ("infection", "lung_infection")  # MosMed annotates infection only

# ------------------------------------------------------------------------------------ tasks and splits
TASKS = ("task1", "task2", "task3")
TASKS_WITH_FOLDS = ("task1", "task3")  # task2 has one split per source
SOURCES = ("structseg", "nsclc", "msd", "all")  # "all" (every source of a subtask) is our addition
VARIANTS = ("official", "grouped", "train80", "train80_grouped")
FOLDS = (0, 1, 2, 3, 4)

TASK1_FILE = "Task1_COVID_datasplit.json"
TASK1_80_FILE = "Task1_COVID_82_datasplit.json"
# (source, subtask) -> (task2 split file, dataset name). Task3 file 30x is task2 file 20x + the COVID cases.
SOURCE_SPLITS = MappingProxyType({
    ("structseg", "lung"): ("Task200_StructSegLung_datasplit.json", "structseg_lung"),
    ("nsclc", "lung"): ("Task201_NSCLCLung_datasplit.json", "nsclc_lung"),
    ("msd", "infection"): ("Task202_MSD_LungTumor_datasplit.json", "msd_lung_tumour"),
    ("structseg", "infection"): ("Task203_StructSegTumor_datasplit.json", "structseg_gtv"),
    ("nsclc", "infection"): ("Task204_NSCLCPE_datasplit.json", "nsclc_effusion"),
})
# MSD lung masks were released after the paper's task2; task3 trains on them with Task302's (= Task202's) lists.
TASK3_ONLY_SPLITS = MappingProxyType({
    ("msd", "lung"): ("Task202_MSD_LungTumor_datasplit.json", "msd_lung"),
})
SPLIT_FILES: tuple[str, ...] = (
    TASK1_FILE,
    TASK1_80_FILE,
    "Task200_StructSegLung_datasplit.json",
    "Task201_NSCLCLung_datasplit.json",
    "Task202_MSD_LungTumor_datasplit.json",
    "Task203_StructSegTumor_datasplit.json",
    "Task204_NSCLCPE_datasplit.json",
    "Task300_StructSegLung_datasplit.json",
    "Task301_NSCLCLung_datasplit.json",
    "Task302_MSD_LungTumor_datasplit.json",
    "Task303_StructSegTumor_datasplit.json",
    "Task304_NSCLCPE_datasplit.json",
)


def source_splits(task: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(source, subtask) -> (task2 split file, dataset name) of the sources `task` trains on."""
    return dict(SOURCE_SPLITS) | (dict(TASK3_ONLY_SPLITS) if task == "task3" else {})


def check_combination(task, subtask, fold=None, source=None, variant="official") -> None:
    """Raise ConfigError, with the fix, on a (task, subtask, fold, source, split variant) the benchmark lacks.

    task1: no source, a fold of `FOLDS`, any variant. task2: a source, fold None (or 0), official or grouped.
    task3: a source and a fold, official or grouped. lung_infection is task1's only; task2 has no MSD lungs.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if subtask not in SUBTASKS:
        raise ConfigError(f"unknown subtask {subtask!r}; choose one of {', '.join(SUBTASKS)}")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown split variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if task == "task1" and source is not None:
        raise ConfigError(f"task1 trains on COVID-19-CT-Seg only: drop source={source} (or use task=task3)")
    if task != "task1":
        if subtask == "lung_infection":
            raise ConfigError(
                f"subtask=lung_infection is task1's only ({task} asked): the {task} sources annotate either lungs "
                "or lesions, and one model for all three labels on them would need a partial-label loss. "
                "Use subtask=lung or subtask=infection."
            )
        if variant.startswith("train80"):
            raise ConfigError(
                f"variant {variant!r} is task1's 80% training variant; {task} takes 'official' or 'grouped'"
            )
        if task == "task2" and fold not in (None, 0):
            raise ConfigError(f"task2 has one split per source (no folds): fold must be None (or 0), got {fold!r}")
        if source not in SOURCES:
            raise ConfigError(f"{task} needs a non-COVID source: source must be one of {', '.join(SOURCES)}, "
                              f"got {source!r}")
        if source != "all" and (source, subtask) not in source_splits(task):
            raise ConfigError(
                f"no published {subtask} training source for source={source!r} in {task}: MSD's lung masks were "
                "released after the paper's task2 (its Task2-MSD lung rows are '-'); use source=structseg or "
                "source=nsclc, or task3, which trains on the MSD lung masks with Task302's case lists"
            )
    if task in TASKS_WITH_FOLDS and (isinstance(fold, bool) or not isinstance(fold, int) or fold not in FOLDS):
        raise ConfigError(f"{task} has the official folds {list(FOLDS)}: set fold=<k> (got fold={fold!r})")


def check_custom_task(name, source) -> None:
    """A task of the user's own: a name that no benchmark task has, and no benchmark source."""
    if str(name) in TASKS:
        raise ConfigError(f"task.name={name} is a benchmark task's name; give your task its own name "
                          "(task.name=<name>), so its runs are never taken for the benchmark's")
    if source is not None:
        raise ConfigError(f"task {name} trains on its own datasets (task.datasets): drop source={source}")
