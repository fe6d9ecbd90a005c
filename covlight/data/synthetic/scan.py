"""A phantom chest CT: the anatomy and a lesion kind rendered in HU, with scanner blur and noise, and its labels.

It is made to defeat a threshold: the trachea and main bronchi are air but not lung and open into the lungs; the
lungs differ in size, nearly touch behind the sternum and are not centred in the field of view; vessels and
consolidation have soft-tissue density; ground-glass overlaps blurred vessel borders and dependent lung.
Everything random comes from one generator seeded by (seed, kind, case id), so the same arguments give
byte-identical arrays.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covlight.data.synthetic.anatomy import SIZES, Anatomy
from covlight.data.synthetic.lesions import KINDS, LESIONS
from covlight.errors import CovlightError


@dataclass(frozen=True)
class Phantom:
    image_hu: np.ndarray  # float32 (x, y, z), RAS+
    label: np.ndarray  # uint8 canonical: 0 background, 1 left lung, 2 right lung, 3 infection / lesion
    spacing: tuple[float, float, float]  # mm, array axis order


def make_phantom(case_id: str, seed: int, size: str = "demo", kind: str = "covid") -> Phantom:
    """One synthetic chest CT in HU with its canonical labels; deterministic in (case_id, seed, size, kind)."""
    if size not in SIZES:
        raise CovlightError(f"size {size!r} is not one of {tuple(SIZES)}")
    if kind not in KINDS:
        raise CovlightError(f"kind {kind!r} is not one of {KINDS}")
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{kind}/{case_id}".encode())])
    anatomy = Anatomy(rng, SIZES[size])
    anatomy.build()
    LESIONS[kind](anatomy)
    return render(anatomy, kind)


def render(anatomy: Anatomy, kind: str) -> Phantom:
    """The CT in HU (tissues, then scanner blur and noise) and its canonical labels."""
    rng, u, v, z = anatomy.rng, anatomy.u, anatomy.v, anatomy.z
    tissue = anatomy.field(12)
    hu = np.full(anatomy.shape, -1000.0, np.float32)
    table = (np.abs(v + 0.93 * anatomy.B + rng.uniform(8, 16) - 0.0006 * u**2) < 2.5) & (np.abs(u) < 0.9 * anatomy.A)
    hu[np.broadcast_to(table, anatomy.shape)] = 150
    hu[anatomy.inside] = -100 + 10 * tissue[anatomy.inside]
    muscle = anatomy.inside & (anatomy.depth >= anatomy.fat)
    hu[muscle] = 45 + 8 * tissue[muscle]
    hu[anatomy.cavity] = -85 + 15 * tissue[anatomy.cavity]
    abdomen = anatomy.cavity & (z <= anatomy.z_diaphragm)
    liver = abdomen & (u > anatomy.xm - 20)
    hu[abdomen] = 35
    hu[liver] = 58
    if rng.random() < 0.6:  # gastric air bubble under the left dome: air that is not lung
        bubble = ((u - anatomy.xm + 0.45 * anatomy.half_width) / 30) ** 2 + (v / 25) ** 2 + (
            (z - anatomy.dome_l + 45) / 20) ** 2 < 1
        hu[abdomen & bubble & (z > anatomy.dome_l - 45)] = -1000
    soft = anatomy.heart | (anatomy.great_vessels > 0.5) | (anatomy.oesophagus > 0.5)
    hu[anatomy.cavity & soft] = 40
    hu[anatomy.canal & anatomy.inside] = 15
    # Lung parenchyma: denser towards the back (dependent), with fine texture.
    parenchyma = (rng.uniform(-880, -845) + rng.uniform(25, 60) * np.clip(0.5 - v / (2 * anatomy.B), 0, 1)
                  + 12 * anatomy.texture)
    hu[anatomy.lung] = parenchyma[anatomy.lung]
    if kind == "effusion":
        hu[anatomy.atelectasis] = rng.uniform(-500, -250) + 40 * anatomy.texture[anatomy.atelectasis]
    hu[anatomy.lesion] = anatomy.lesion_hu[anatomy.lesion]
    # Vessels over lung and mediastinal fat (not over airways, bone or fluid); partial volume at the edges.
    occupancy = anatomy.vessel * (anatomy.cavity & ~anatomy.lesion if kind == "effusion" else anatomy.cavity)
    occupancy = np.where(anatomy.airway_wall > 0.5, 0, occupancy)
    vessel_hu = rng.uniform(20, 60)
    hu = np.where(occupancy > 0, np.maximum(hu, hu * (1 - occupancy) + vessel_hu * occupancy), hu)
    wall = anatomy.airway_wall * anatomy.inside
    hu = hu * (1 - wall) + 40 * wall
    lumen = anatomy.lumen * anatomy.inside
    hu = hu * (1 - lumen) - 1000 * lumen
    bone = anatomy.bone & anatomy.inside
    hu[bone] = anatomy.bone_hu[bone]
    hu[anatomy.disc & anatomy.inside] = 90
    hu[anatomy.cartilage & anatomy.inside] = 130

    # Scanner: blur, then correlated noise.
    sigma = rng.uniform(0.6, 1.0)
    hu = ndimage.gaussian_filter(hu, (sigma, sigma, 0.5 * sigma))
    noise = ndimage.gaussian_filter(rng.standard_normal(anatomy.shape, dtype=np.float32), (0.6, 0.6, 0))
    hu += noise * (rng.uniform(20, 40) / noise.std())

    label = np.zeros(anatomy.shape, np.uint8)
    label[anatomy.lung & anatomy.left_side] = 1
    label[anatomy.lung & ~anatomy.left_side] = 2
    label[anatomy.lesion] = 3
    return Phantom(hu.astype(np.float32), label, anatomy.spacing)
