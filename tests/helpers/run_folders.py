"""Run folders as training leaves them, with made-up per-case metrics: a fake task1 sweep for report tests."""

from __future__ import annotations

import json
import math

from covlight.splits import COVID, MOSMED, official_split

COLUMNS = ["L-lungDSC", "L-lung-1mm", "R-lungDSC", "R-lung-1mm", "LesionDSC", "LesionNSD-3mm"]
NAMES, FOLDS = ("unet2d", "unet3d"), (0, 1)
NAN_CASE = ("unet2d", 1, "coronacases_006")  # its lesion DSC and NSD are NaN (empty truth and prediction)


def make_run(root, name, fold, state="finished", rows=None, stamp="2026-01-01_00-00-00", error=None):
    """A run folder as training leaves it: status.json with the identity, metrics.csv when finished."""
    path = root / "task1" / "lung_infection" / name / f"fold{fold}-seed0" / stamp
    path.mkdir(parents=True)
    identity = {"name": name, "fold": fold, "seed": 0, "task": "task1", "source": None,
                "subtask": "lung_infection", "model": name}
    status = {"state": state, "identity": identity} | ({"error": error} if error else {})
    (path / "status.json").write_text(json.dumps(status), encoding="utf-8")
    if rows is not None:
        lines = [",".join(["Name", "dataset", *COLUMNS])]
        lines += [",".join([case, dataset, *("nan" if math.isnan(v) else f"{v:.6f}" for v in values)])
                  for case, dataset, values in rows]
        (path / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fake_rows(rng, name, fold):
    """Every test case of task1 fold `fold` (lung_infection), as its split lists them: the fold's 16 COVID cases
    with every structure, the 50 MosMed cases with infection only (lung columns NaN)."""
    test = official_split("task1", "lung_infection", fold).test
    rows = []
    for case in test[COVID]:
        values = [*rng.uniform(0.8, 1.0, 4), *rng.uniform(0.2, 0.9, 2)]
        if (name, fold, case) == NAN_CASE:
            values[4:] = [math.nan, math.nan]
        rows.append((case, COVID, values))
    for case in test[MOSMED]:
        rows.append((case, MOSMED, [math.nan] * 4 + list(rng.uniform(0.1, 0.8, 2))))
    return rows
