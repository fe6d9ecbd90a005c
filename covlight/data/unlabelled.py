"""The unlabelled pool of semi-supervised and domain-adaptation methods: which cases, and their patch stream.

Configured as `data.unlabelled = {"datasets": ..., "ratio": r}` (`covlight.data.options.Unlabelled`): `datasets` is a list of dataset names (every case
of each) or a mapping name -> "all" | [case ids]; `ratio` is the number of unlabelled patches per labelled patch.
Unlabelled cases need only an image (a label file, if present, is never read).

The rule (docs/ARCHITECTURE.md, "Policies"): the pool never holds a test case of any task. By construction, a pool may not name a dataset
that holds test cases (`covid19_ct_seg`: every one of its cases is a test case of some task or fold; `mosmed`: its
50 labelled CT-1 studies are test cases), nor hold, under any dataset name, a COVID-19-CT-Seg case id, a labelled
MosMed study id, or a case id of the split's test or held-out (in-domain test / validation) lists. The unlabelled
MosMed studies (`python -m covlight.prepare mosmed --unlabelled` -> `mosmed_unlabelled`) are the pool for real
data. Breaking the rule is an error naming the cases, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torchio as tio

from covlight.benchmark import COVID, COVID_CASES, MOSMED, MOSMED_CASES
from covlight.data.patches import PatchStream
from covlight.errors import DatasetError
from covlight.splits import Split

TEST_DATASETS = {
    COVID: "every COVID-19-CT-Seg case is a test case of some task",
    MOSMED: "its 50 labelled studies are test cases; import the unlabelled studies as mosmed_unlabelled",
}


def pool_lists(datasets, split: Split, cases_of: Callable[[str], Iterable[str]]) -> dict[str, list[str]]:
    """dataset name -> case ids of the pool (`data.unlabelled.datasets`), checked against the rule above
    (DatasetError naming the fix). `cases_of(name)` lists the cases of a dataset (for "all").
    """
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets:
        raise DatasetError("data.unlabelled.datasets is empty: name the unlabelled datasets, e.g. [mosmed_unlabelled]")
    if not isinstance(datasets, Mapping):
        datasets = {name: "all" for name in datasets}
    never = {case for lists in (split.val, split.test) for cases in lists.values() for case in cases}
    never |= set(COVID_CASES) | set(MOSMED_CASES)
    pool = {}
    for name, cases in datasets.items():
        if name in TEST_DATASETS:
            raise DatasetError(f"data.unlabelled names {name}, which is never an unlabelled pool: "
                               f"{TEST_DATASETS[name]}.")
        cases = list(cases_of(name)) if cases == "all" else [str(c) for c in cases]
        forbidden = sorted(c for c in cases if c in never)
        if forbidden:
            raise DatasetError(
                f"the unlabelled pool ({name}) holds test case(s) {forbidden[:5]}{' ...' if len(forbidden) > 5 else ''}"
                " (COVID-19-CT-Seg, labelled MosMed, or this split's test / held-out lists); a pool never contains "
                f"a test case. List the cases of data.unlabelled.datasets.{name} explicitly without them."
            )
        pool[name] = cases
    return pool


class UnlabelledStream(PatchStream):
    """Augmented image patches (no label) of the pool's cases; `dataset` names each one's domain."""

    def item(self, patch: tio.Subject) -> dict:
        return {"image": patch["image"].data.float(), "dataset": patch["dataset"]}


def unlabelled_batch_size(ratio: float, batch_size: int) -> int:
    """`ratio` unlabelled patches per labelled patch, at least one."""
    return max(1, round(ratio * batch_size))
