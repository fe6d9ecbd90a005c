"""What a phantom's lungs hold besides lung, one function per kind: COVID-19 ground-glass and consolidation, a
solid tumour, a pleural effusion. Each sets `lesion` (a mask) and `lesion_hu` on the anatomy."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from covlight.data.synthetic.anatomy import Anatomy


def covid(anatomy: Anatomy) -> None:
    """Ground-glass and consolidation: high parts of a smooth random field biased to the chest wall, the
    posterior and the bases; the threshold is the quantile that gives the case's lesion burden."""
    rng, v, z = anatomy.rng, anatomy.v, anatomy.z
    lung = anatomy.lung
    near_wall = np.exp(-anatomy.edt(anatomy.cavity) / 15)  # subpleural along the chest wall, not the mediastinum
    score = (0.65 * anatomy.field(14) + 0.35 * anatomy.field(35) + 1.1 * near_wall
             + 0.4 * np.clip(-v / anatomy.B, -1, 1) + 0.3 * np.clip((anatomy.carina - z) / anatomy.height, -1, 1)
             + rng.uniform(-0.3, 0.3) * np.where(anatomy.left_side, 1, -1))
    burden = float(np.exp(rng.uniform(np.log(0.01), np.log(0.3))))
    inside = score[lung]
    threshold = np.quantile(inside, 1 - burden)
    lesion = lung & (score > threshold)
    # Consolidation: the cores of the lesions, more of them in heavy cases.
    solid = rng.uniform(0.05, 0.6) * min(1.0, burden / 0.08)
    core = np.quantile(score[lesion], 1 - solid) if lesion.any() else np.inf
    excess = (score - threshold) / (0.5 * inside.std())
    ggo = -650 + 330 * np.clip(excess, 0, 1) + 45 * anatomy.texture
    consolidation = rng.uniform(-70, 10) + 30 * anatomy.texture
    anatomy.lesion_hu = np.where(score > core, consolidation, ggo)
    anatomy.lesion = lesion


def tumour(anatomy: Anatomy) -> None:
    """One solid, lobulated mass of soft-tissue density."""
    rng = anatomy.rng
    radius = rng.uniform(10, 28)
    candidates = np.argwhere(anatomy.edt(anatomy.lung) > 0.5 * radius)
    if not len(candidates):
        candidates = np.argwhere(anatomy.lung)
    cx, cy, cz = anatomy.to_mm(candidates[rng.integers(len(candidates))])
    distance = np.sqrt((anatomy.u - cx) ** 2 + (anatomy.v - cy) ** 2 + (anatomy.z - cz) ** 2) / radius
    anatomy.lesion = anatomy.lung & (distance + 0.2 * anatomy.field(8) < 1)
    anatomy.lesion_hu = rng.uniform(25, 50) + 15 * anatomy.texture - 25 * np.clip(1 - 2 * distance, 0, 1)


def effusion(anatomy: Anatomy) -> None:
    """Pleural fluid in the dependent (posterior) pleural space of one or both sides; the lung gives way."""
    rng, v, z = anatomy.rng, anatomy.v, anatomy.z
    sides = [(True,), (False,), (True, False)][rng.choice(3, p=[0.3, 0.4, 0.3])]
    to_wall = anatomy.edt(anatomy.cavity)
    fluid = np.zeros(anatomy.shape, bool)
    for left in sides:
        thick = rng.uniform(15, 45)
        reach = rng.uniform(0.6, 1.2) * anatomy.B
        profile = (np.clip(1 - (v - anatomy.back_wall + 20) / reach, 0, 1)
                   * np.clip(1 - (z - anatomy.dome_r) / (rng.uniform(0.5, 0.9) * anatomy.height), 0.2, 1))
        fluid |= anatomy.lung & (anatomy.left_side == left) & (to_wall < thick * profile + 3 * anatomy.field(20))
    anatomy.lung &= ~fluid
    # Compressive atelectasis: lung next to the fluid is denser (still lung).
    anatomy.atelectasis = anatomy.lung & (ndimage.distance_transform_edt(~fluid, sampling=anatomy.spacing) < 8)
    anatomy.lesion = fluid
    anatomy.lesion_hu = rng.uniform(0, 20) + 5 * anatomy.texture


LESIONS = {"covid": covid, "tumour": tumour, "effusion": effusion}
KINDS = tuple(LESIONS)
