"""Synthetic chest CT phantoms (HU) with canonical labels, for the demo, the tests and importer tests.

Anatomy is built in millimetres in a patient frame -- u towards the patient's right, v anterior, z superior
from the lowest slice -- and sampled on each case's own grid, so a phantom looks alike at any spacing. It is
made to defeat a threshold: the trachea and main bronchi are air but not lung and open into the lungs; the
lungs differ in size, nearly touch behind the sternum and are not centred in the field of view; vessels and
consolidation have soft-tissue density; ground-glass overlaps blurred vessel borders and dependent lung.

Everything random comes from one generator seeded by (seed, kind, case id), so the same arguments give
byte-identical arrays.

The README montage: `python -m covlight.phantoms --montage docs/phantom.png --montage-case coronacases_002`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from covlight.atomic import write_json
from covlight.benchmark import COVID_CASES  # the official ids, so the official Task 1 folds apply to phantoms
from covlight.data.canonical import (
    DatasetError,
    affine_from_spacing,
    hu_to_0_255,
    save_nifti,
    write_case,
    write_dataset_json,
)

KINDS = ("covid", "tumour", "effusion")
LAYOUTS = ("canonical", "official")
MARKER = ".covlight-phantoms.json"  # written first: says which phantom dataset a folder holds
OFFICIAL_FOLDERS = ("COVID-19-CT-Seg_20cases", "Lung_Mask", "Infection_Mask", "Lung_and_Infection_Mask")


@dataclass(frozen=True)
class Size:
    n_xy: int
    xy_spacing: tuple[float, float]  # mm, drawn per case
    slices: tuple[int, int]
    z_spacing: tuple[float, float]


SIZES = {
    "demo": Size(128, (2.6, 3.2), (28, 44), (5.0, 8.0)),
    "small": Size(64, (5.5, 6.5), (16, 24), (10.0, 14.0)),
}


@dataclass(frozen=True)
class Phantom:
    image_hu: np.ndarray  # float32 (x, y, z), RAS+
    label: np.ndarray  # uint8 canonical: 0 background, 1 left lung, 2 right lung, 3 infection / lesion
    spacing: tuple[float, float, float]  # mm, array axis order


def case_ids(kind: str = "covid", cases: int = 20) -> list[str]:
    """The first `cases` case ids of a kind: the official ids for COVID, `phantom_<kind>_NNN` otherwise."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    if kind == "covid":
        if not 1 <= cases <= len(COVID_CASES):
            raise ValueError(f"--cases must be 1..{len(COVID_CASES)} for COVID phantoms (the official ids), got {cases}")
        return list(COVID_CASES[:cases])
    if cases < 1:
        raise ValueError(f"--cases must be at least 1, got {cases}")
    return [f"phantom_{kind}_{i:03d}" for i in range(1, cases + 1)]


def make_phantom(case_id: str, seed: int, size: str = "demo", kind: str = "covid") -> Phantom:
    """One synthetic chest CT in HU with its canonical labels; deterministic in (case_id, seed, size, kind)."""
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {tuple(SIZES)}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{kind}/{case_id}".encode())])
    return _Builder(rng, SIZES[size]).build(kind)


def _smooth_noise(rng, shape, spacing, scale_mm: float) -> np.ndarray:
    """Unit-variance Gaussian-filtered noise with correlation length ~scale_mm, filtered on a coarse grid (cheap)."""
    step = np.maximum(1.0, scale_mm / 2.0 / np.asarray(spacing))
    coarse = tuple(int(np.ceil(n / s)) + 2 if s > 1 else n for n, s in zip(shape, step, strict=True))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32),
                                    scale_mm / (np.asarray(spacing) * step), mode="wrap")
    if coarse != tuple(shape):
        field = ndimage.zoom(field, np.asarray(shape) / np.asarray(coarse), order=1)
    return (field - field.mean()) / (field.std() + 1e-6)


class _Builder:
    """Builds one phantom; each method adds one part of the anatomy (state shared as attributes, all in mm)."""

    def __init__(self, rng: np.random.Generator, size: Size):
        self.rng = rng
        uniform = rng.uniform
        sxy = round(float(uniform(*size.xy_spacing)), 3)
        sz = round(float(uniform(*size.z_spacing)), 3)
        nz = int(np.clip(round(uniform(230, 320) / sz), *size.slices))
        self.spacing = (sxy, sxy, sz)
        self.shape = (size.n_xy, size.n_xy, nz)
        self.height = nz * sz
        fov = size.n_xy * sxy
        # Body half-width and half-depth, and the patient's offset from the centre of the field of view.
        self.A = uniform(0.41, 0.46) * fov
        self.B = self.A * uniform(0.7, 0.8)
        self.centre = ((size.n_xy - 1) / 2 * sxy + uniform(-0.03, 0.03) * fov,
                       (size.n_xy - 1) / 2 * sxy - uniform(0.02, 0.06) * fov)
        n = size.n_xy
        self.u = (np.arange(n) * sxy - self.centre[0]).astype(np.float32)[:, None, None]
        self.v = (np.arange(n) * sxy - self.centre[1]).astype(np.float32)[None, :, None]
        self.z = ((np.arange(nz) + 0.5) * sz).astype(np.float32)[None, None, :]
        self.origin = np.array([self.centre[0], self.centre[1], -0.5 * sz])  # patient frame -> index * spacing

    def to_index(self, points) -> np.ndarray:
        """Nearest voxel indices of points (..., 3) given in the patient frame (mm)."""
        return np.rint((np.asarray(points) + self.origin) / np.asarray(self.spacing)).astype(int)

    def to_mm(self, indices) -> np.ndarray:
        return np.asarray(indices) * np.asarray(self.spacing) - self.origin

    def field(self, scale_mm: float) -> np.ndarray:
        return _smooth_noise(self.rng, self.shape, self.spacing, scale_mm)

    def edt(self, mask: np.ndarray) -> np.ndarray:
        """Distance (mm) from each voxel of `mask` to the nearest voxel outside it."""
        return ndimage.distance_transform_edt(mask, sampling=self.spacing).astype(np.float32)

    def tubes(self, segments) -> np.ndarray:
        """Partial-volume occupancy (0..1) of tubes given as (p0, p1, r0, r1) in the patient frame (mm).

        The centre line is drawn into a radius map; one distance transform then gives each voxel its distance
        to the nearest centre-line voxel and that voxel's radius, so a whole tree costs one transform.
        """
        spacing = np.asarray(self.spacing)
        points, radii = [], []
        for p0, p1, r0, r1 in segments:
            p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
            count = int(np.ceil(np.linalg.norm(p1 - p0) / (0.4 * spacing.min()))) + 1
            t = np.linspace(0.0, 1.0, count)[:, None]
            points.append(p0 + t * (p1 - p0))
            radii.append(r0 + t[:, 0] * (r1 - r0))
        index = self.to_index(np.concatenate(points))
        radii = np.concatenate(radii)
        inside = np.all((index >= 0) & (index < self.shape), axis=1)
        index, radii = index[inside], radii[inside]
        occupancy = np.zeros(self.shape, np.float32)
        if not len(index):
            return occupancy
        # Work in the tubes' bounding box only.
        margin = np.ceil(radii.max() / spacing).astype(int) + 2
        low = np.maximum(index.min(0) - margin, 0)
        high = np.minimum(index.max(0) + margin + 1, self.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        radius_map = np.zeros(high - low, np.float32)
        np.maximum.at(radius_map, tuple((index - low).T), radii.astype(np.float32))
        distance, nearest = ndimage.distance_transform_edt(radius_map == 0, sampling=spacing, return_indices=True)
        radius = radius_map[tuple(nearest)]
        # Partial volume: a tube thinner than a voxel fills only part of it.
        occupancy[box] = np.clip(0.5 + (radius - distance) / spacing[0], 0, 1) * np.minimum(1, 2 * radius / spacing[0])
        return occupancy

    # ---- anatomy -------------------------------------------------------------------------------------------

    def body(self):
        """Outline, depth under the skin, fat and muscle layers, and the thoracic cavity inside the ribs."""
        rng, u, v = self.rng, self.u, self.v
        back = np.where(v > 0, self.B, 0.93 * self.B)  # flattened where the patient lies on the table
        bulge = self.field(35)  # an irregular outline, with more fat where it bulges
        radius = (np.abs(u) / self.A) ** 2.4 + (np.abs(v) / back) ** 2.4 + 0.05 * bulge
        self.inside = radius < 1
        self.depth = self.edt(self.inside)  # mm under the skin
        fat, muscle, self.rib_zone = rng.uniform(4, 14), rng.uniform(5, 10), 8.0
        self.fat = fat + 2 * bulge
        paraspinal = 30 * np.exp(-((u / 28) ** 2)) * np.clip((-v / self.B - 0.25) / 0.35, 0, 1)
        self.wall = self.fat + muscle + self.rib_zone + paraspinal
        self.cavity = self.depth > self.wall
        wall = fat + muscle + self.rib_zone
        self.back_wall = -0.93 * self.B + wall + 30  # posterior edge of the cavity at the midline
        self.front_wall = self.B - wall
        self.half_width = self.A - wall

    def skeleton(self):
        """Spine (vertebral bodies with discs, arch, processes), ribs, costal cartilage and sternum."""
        rng, u, v, z = self.rng, self.u, self.v, self.z
        self.rv = rng.uniform(15, 19)
        self.vs = self.back_wall + 0.4 * self.rv  # vertebral body centre
        r = np.sqrt(u**2 + (v - self.vs) ** 2)
        disc = ((z - rng.uniform(0, 30)) % rng.uniform(26, 31)) < 6
        self.vertebra = r < self.rv
        canal_v = self.vs - self.rv - 8
        rc = np.sqrt(u**2 + (v - canal_v) ** 2)
        arch = (rc > 7) & (rc < 11.5)
        spinous = (np.abs(u) < 3.5) & (v < canal_v - 7) & (v > canal_v - 40)
        transverse = (np.abs(v - canal_v) < 4) & (np.abs(u) > 8) & (np.abs(u) < 30)
        self.canal = rc <= 7
        posterior = (arch | spinous | transverse) & self.inside
        band = (self.depth > self.wall - self.rib_zone) & (self.depth <= self.wall - 1)
        angle = np.abs(np.arctan2(u, -v)) / np.pi  # 0 at the back, 1 at the front
        pitch = rng.uniform(30, 36)
        phase = (z + rng.uniform(60, 90) * angle**1.3 + rng.uniform(0, pitch)) % pitch
        rib = band & (phase < 11) & (np.abs(u) > 16)
        self.rib = rib & (angle < 0.8)
        self.cartilage = rib & (angle >= 0.8)
        self.sternum = ((np.abs(u) < 14) & (v > 0) & (self.depth > self.wall - self.rib_zone - 2)
                        & (self.depth <= self.wall) & (z > 0.3 * self.height) & (z < 0.9 * self.height))
        cortex = self.vertebra & (r > self.rv - 2.5) & ~disc
        self.bone = (self.vertebra & ~disc) | posterior | self.rib | self.sternum
        self.bone_hu = np.where(cortex | self.rib | posterior, rng.uniform(550, 850), rng.uniform(250, 380))
        self.disc = self.vertebra & disc

    def layout(self):
        """Heights of domes, apices, carina and arch; mediastinum centre, trachea and the junction line."""
        rng, h = self.rng, self.height
        self.xm = -rng.uniform(3, 10)  # mediastinum centre: towards the patient's left
        self.dome_r = rng.uniform(0.22, 0.3) * h
        self.dome_l = self.dome_r - rng.uniform(8, 20)
        self.apex = rng.uniform(0.86, 0.95) * h
        self.carina = self.dome_r + rng.uniform(0.45, 0.55) * (self.apex - self.dome_r)
        self.z_arch = min(self.carina + rng.uniform(15, 25), self.apex - 10)
        self.spine_front = self.vs + self.rv
        self.central_depth = rng.uniform(30, 38)
        self.trachea_radius = rng.uniform(8, 10.5)
        self.trachea_at = (self.xm + rng.uniform(0, 5), self.spine_front + 18 + self.trachea_radius)
        # Where the lungs meet: behind the mediastinum at its centre; in front of it, behind the sternum, along
        # a thin line that bends towards the patient's left (the right lung crosses the midline there).
        bend = np.clip((self.v - self.spine_front - 1.6 * self.central_depth) / 25, 0, 1)
        cross = rng.uniform(8, 30) + rng.uniform(0.0, 0.1) * (self.z - self.carina)
        self.junction = self.xm - bend * cross
        self.gap = rng.uniform(0.4, 0.7) * self.spacing[0]

    def diaphragm(self):
        """Height of the diaphragm: two domes (the right one higher), deepest at the back and the sides."""
        rng, u, v = self.rng, self.u, self.v
        depth = rng.uniform(30, 45)

        def dome(top, centre_u):
            spread = ((u - centre_u) / (0.55 * self.half_width)) ** 2 + ((v - 0.05 * self.B) / (0.8 * self.B)) ** 2
            return top - depth * spread - 0.3 * depth * np.clip(-v / self.B, 0, 1)

        right = dome(self.dome_r, self.xm + 0.45 * self.half_width)
        left = dome(self.dome_l, self.xm - 0.45 * self.half_width)
        weight = 1 / (1 + np.exp(-(u - self.xm) / 12))
        self.z_diaphragm = weight * right + (1 - weight) * left

    def mediastinum(self):
        """Heart, great vessels, oesophagus and the fat around them: the non-lung in the cavity above the domes."""
        rng, u, v, z = self.rng, self.u, self.v, self.z
        width = rng.uniform(16, 22) + 8 * np.clip((z - self.carina) / (self.apex - self.carina), 0, 1)
        depth = self.central_depth
        central = ((u - self.xm) / width) ** 2 + ((v - self.spine_front - 0.8 * depth) / depth) ** 2 < 1
        # Heart: an ellipsoid whose long axis points left-anterior, sitting on the diaphragm.
        ah, bh, ch = (rng.uniform(0.45, 0.55) * self.half_width, rng.uniform(0.33, 0.4) * self.half_width,
                      rng.uniform(45, 55))
        angle = np.deg2rad(rng.uniform(25, 40))
        hx, hy, hz = (self.xm - rng.uniform(18, 30), self.front_wall - bh - rng.uniform(0, 6),
                      0.5 * (self.dome_r + self.dome_l) + ch * rng.uniform(0.35, 0.55))
        along = -(u - hx) * np.cos(angle) + (v - hy) * np.sin(angle)
        across = (u - hx) * np.sin(angle) + (v - hy) * np.cos(angle)
        heart = (along / ah) ** 2 + (across / bh) ** 2 + ((z - hz) / ch) ** 2
        self.heart = heart < 1
        # Great vessels (centre lines in mm, radii) and the oesophagus.
        top, tv = self.height + 20, self.trachea_at[1]
        desc = (self.xm - rng.uniform(18, 24), self.spine_front + 9)
        asc = (self.xm + rng.uniform(8, 14), hy + 0.2 * bh)
        arch = (self.xm - 4, 0.5 * (asc[1] + desc[1]), self.z_arch + 14)
        svc = (asc[0] + rng.uniform(18, 24), tv + 8)
        self.pa_fork = np.array([self.xm - 6, tv + 20, self.carina - 10])
        self.atrium = np.array([hx + 10, hy - 0.6 * bh, hz + 0.3 * ch])
        great = [
            ((*asc, hz + 0.3 * ch), (*asc, self.z_arch), 14, 14),
            ((*asc, self.z_arch), arch, 14, 12),
            (arch, (*desc, self.z_arch), 12, 11),
            ((*desc, self.z_arch), (*desc, -20), 11, 10),
            ((arch[0] + 8, arch[1] + 8, arch[2] - 2), (self.xm + 14, asc[1] - 10, top), 7, 6),  # brachiocephalic
            ((arch[0] - 6, arch[1] - 6, arch[2] - 2), (self.xm - 18, desc[1] + 8, top), 5, 5),  # left subclavian
            ((*svc, top), (svc[0], svc[1] + 5, hz + 0.5 * ch), 9, 10),  # superior vena cava
            ((self.xm - 10, hy + 0.4 * bh, hz + 0.7 * ch), self.pa_fork, 13, 12),  # pulmonary trunk
        ]
        self.great_vessels = self.tubes(great)
        sleeve = self.tubes([(p0, p1, r0 + 5, r1 + 5) for p0, p1, r0, r1 in great])  # mediastinal fat around them
        oesophagus = (self.xm - 4, self.spine_front + 8)
        self.oesophagus = self.tubes([((*oesophagus, top), (*oesophagus, -20), 7, 7)])
        self.nonlung = (central | (heart < 1.08**2) | (sleeve > 0.5) | (self.oesophagus > 0.2)
                        | (np.sqrt(u**2 + (v - self.vs) ** 2) < self.rv + 3)
                        | (np.abs(u - self.junction) < self.gap))

    def lungs(self):
        """The cavity above the diaphragm less the mediastinum, narrowing to each apex; split at the junction."""
        rng, u, v, z = self.rng, self.u, self.v, self.z
        taper = rng.uniform(70, 100)
        apex_l = self.apex - rng.uniform(0, 8)
        sides = []
        for centre, apex in ((self.xm - 0.5 * self.half_width, apex_l), (self.xm + 0.5 * self.half_width, self.apex)):
            shrink = np.clip((apex - z) / taper, 0, 1)  # lungs narrow to a dome at the apex
            sides.append(((u - centre) / (0.85 * self.half_width)) ** 2
                         + ((v + 0.15 * self.B) / (1.3 * self.B)) ** 2 < shrink)
        lung = self.cavity & ~self.nonlung & (z > self.z_diaphragm)
        self.left_side = u < self.junction
        self.lung = lung & np.where(self.left_side, sides[0], sides[1])

    def airways(self):
        """Trachea and main bronchi: air in a soft-tissue wall, not lung, each opening into its lung."""
        rng, radius = self.rng, self.trachea_radius
        carina = np.array([*self.trachea_at, self.carina])
        lumen = [((*self.trachea_at, self.height + 20), carina, radius, radius)]
        wall = [((*self.trachea_at, self.height + 20), carina, radius + 2, radius + 2)]
        self.hila = {}
        for side, sign, tilt, scale in (("right", 1, rng.uniform(40, 50), 0.72), ("left", -1, rng.uniform(55, 65), 0.62)):
            tilt = np.deg2rad(tilt)
            direction = np.array([sign * np.sin(tilt), -0.25, -np.cos(tilt)])
            direction /= np.linalg.norm(direction)
            entry = self._first_in_lung(carina, direction, left=(sign < 0))
            r = scale * radius
            lumen.append((carina, entry + 8 * direction, r, r))
            wall.append((carina, entry + 2 * direction, r + 2, r + 2))
            self.hila[side] = entry
        self.lumen = self.tubes(lumen)
        self.airway_wall = self.tubes(wall)
        self.lung &= ~(self.airway_wall > 0.5)

    def _first_in_lung(self, start, direction, left: bool) -> np.ndarray:
        """The first point of the ray from `start` that lies in the lung of the given side (the hilum)."""
        for step in np.arange(0.0, 90.0, 1.0):
            point = start + step * direction
            i, j, k = self.to_index(point)
            if (0 <= np.array([i, j, k])).all() and (np.array([i, j, k]) < self.shape).all() \
                    and self.lung[i, j, k] and bool(self.left_side[i, 0, k]) == left:
                return point
        return start + 60 * direction

    def vessels(self):
        """Pulmonary arteries and veins: trees from each hilum to points spread through its lung, joined to the
        pulmonary trunk and the left atrium by hilar vessels that are not lung."""
        rng = self.rng
        hilar, trees = [], []
        for side, left in (("right", False), ("left", True)):
            voxels = np.argwhere(self.lung & (self.left_side == left))
            entry = self.hila[side]
            for root, source, count in ((entry + [0, 9, 8], self.pa_fork, 40), (entry + [0, -6, -22], self.atrium, 36)):
                hilar.append((source, root, 9, 8))
                picks = voxels[rng.choice(len(voxels), size=min(count, len(voxels)), replace=False)]
                targets = self.to_mm(picks + rng.uniform(-0.5, 0.5, picks.shape))
                self._branch(root, targets, trees)
        hilar = self.tubes(hilar)
        self.lung &= ~(hilar > 0.5)
        self.vessel = np.maximum(self.tubes(trees), hilar)

    def _branch(self, point, targets, segments, leaf=1.1):
        """Split the targets along their main axis, step part-way towards each half, recurse (a binary tree)."""
        if len(targets) == 1:
            segments.append((point, targets[0], leaf * 1.3, leaf))
            return
        spread = targets - targets.mean(0)
        axis = np.linalg.svd(spread, full_matrices=False)[2][0]
        axis *= np.sign(axis[np.argmax(np.abs(axis))])  # a fixed sign, so the halves come in a fixed order
        order = np.argsort(spread @ axis)
        for half in (targets[order[: len(order) // 2]], targets[order[len(order) // 2:]]):
            joint = point + self.rng.uniform(0.3, 0.5) * (half.mean(0) - point)
            radius = min(leaf * len(half) ** 0.45, 7.0)
            segments.append((point, joint, radius * 1.1, radius))
            self._branch(joint, half, segments, leaf)

    # ---- lesions -------------------------------------------------------------------------------------------

    def covid(self):
        """Ground-glass and consolidation: high parts of a smooth random field biased to the chest wall, the
        posterior and the bases; the threshold is the quantile that gives the case's lesion burden."""
        rng, v, z = self.rng, self.v, self.z
        lung = self.lung
        near_wall = np.exp(-self.edt(self.cavity) / 15)  # subpleural along the chest wall, not the mediastinum
        score = (0.65 * self.field(14) + 0.35 * self.field(35) + 1.1 * near_wall
                 + 0.4 * np.clip(-v / self.B, -1, 1) + 0.3 * np.clip((self.carina - z) / self.height, -1, 1)
                 + rng.uniform(-0.3, 0.3) * np.where(self.left_side, 1, -1))
        burden = float(np.exp(rng.uniform(np.log(0.01), np.log(0.3))))
        inside = score[lung]
        threshold = np.quantile(inside, 1 - burden)
        lesion = lung & (score > threshold)
        # Consolidation: the cores of the lesions, more of them in heavy cases.
        solid = rng.uniform(0.05, 0.6) * min(1.0, burden / 0.08)
        core = np.quantile(score[lesion], 1 - solid) if lesion.any() else np.inf
        excess = (score - threshold) / (0.5 * inside.std())
        ggo = -650 + 330 * np.clip(excess, 0, 1) + 45 * self.texture
        consolidation = rng.uniform(-70, 10) + 30 * self.texture
        self.lesion_hu = np.where(score > core, consolidation, ggo)
        self.lesion = lesion

    def tumour(self):
        """One solid, lobulated mass of soft-tissue density."""
        rng = self.rng
        radius = rng.uniform(10, 28)
        candidates = np.argwhere(self.edt(self.lung) > 0.5 * radius)
        if not len(candidates):
            candidates = np.argwhere(self.lung)
        cx, cy, cz = self.to_mm(candidates[rng.integers(len(candidates))])
        distance = np.sqrt((self.u - cx) ** 2 + (self.v - cy) ** 2 + (self.z - cz) ** 2) / radius
        self.lesion = self.lung & (distance + 0.2 * self.field(8) < 1)
        self.lesion_hu = rng.uniform(25, 50) + 15 * self.texture - 25 * np.clip(1 - 2 * distance, 0, 1)

    def effusion(self):
        """Pleural fluid in the dependent (posterior) pleural space of one or both sides; the lung gives way."""
        rng, v, z = self.rng, self.v, self.z
        sides = [(True,), (False,), (True, False)][rng.choice(3, p=[0.3, 0.4, 0.3])]
        to_wall = self.edt(self.cavity)
        fluid = np.zeros(self.shape, bool)
        for left in sides:
            thick = rng.uniform(15, 45)
            reach = rng.uniform(0.6, 1.2) * self.B
            profile = (np.clip(1 - (v - self.back_wall + 20) / reach, 0, 1)
                       * np.clip(1 - (z - self.dome_r) / (rng.uniform(0.5, 0.9) * self.height), 0.2, 1))
            fluid |= self.lung & (self.left_side == left) & (to_wall < thick * profile + 3 * self.field(20))
        self.lung &= ~fluid
        # Compressive atelectasis: lung next to the fluid is denser (still lung).
        self.atelectasis = self.lung & (ndimage.distance_transform_edt(~fluid, sampling=self.spacing) < 8)
        self.lesion = fluid
        self.lesion_hu = rng.uniform(0, 20) + 5 * self.texture

    # ---- image ---------------------------------------------------------------------------------------------

    def build(self, kind: str) -> Phantom:
        rng, u, v, z = self.rng, self.u, self.v, self.z
        self.body()
        self.skeleton()
        self.layout()
        self.diaphragm()
        self.mediastinum()
        self.lungs()
        self.airways()
        self.vessels()
        self.texture = self.field(4)  # fine texture, shared by regions that do not overlap
        getattr(self, kind)()

        tissue = self.field(12)
        hu = np.full(self.shape, -1000.0, np.float32)
        table = (np.abs(v + 0.93 * self.B + rng.uniform(8, 16) - 0.0006 * u**2) < 2.5) & (np.abs(u) < 0.9 * self.A)
        hu[np.broadcast_to(table, self.shape)] = 150
        hu[self.inside] = -100 + 10 * tissue[self.inside]
        muscle = self.inside & (self.depth >= self.fat)
        hu[muscle] = 45 + 8 * tissue[muscle]
        hu[self.cavity] = -85 + 15 * tissue[self.cavity]
        abdomen = self.cavity & (z <= self.z_diaphragm)
        liver = abdomen & (u > self.xm - 20)
        hu[abdomen] = 35
        hu[liver] = 58
        if rng.random() < 0.6:  # gastric air bubble under the left dome: air that is not lung
            bubble = ((u - self.xm + 0.45 * self.half_width) / 30) ** 2 + (v / 25) ** 2 + (
                (z - self.dome_l + 45) / 20) ** 2 < 1
            hu[abdomen & bubble & (z > self.dome_l - 45)] = -1000
        soft = self.heart | (self.great_vessels > 0.5) | (self.oesophagus > 0.5)
        hu[self.cavity & soft] = 40
        hu[self.canal & self.inside] = 15
        # Lung parenchyma: denser towards the back (dependent), with fine texture.
        parenchyma = (rng.uniform(-880, -845) + rng.uniform(25, 60) * np.clip(0.5 - v / (2 * self.B), 0, 1)
                      + 12 * self.texture)
        hu[self.lung] = parenchyma[self.lung]
        if kind == "effusion":
            hu[self.atelectasis] = rng.uniform(-500, -250) + 40 * self.texture[self.atelectasis]
        hu[self.lesion] = self.lesion_hu[self.lesion]
        # Vessels over lung and mediastinal fat (not over airways, bone or fluid); partial volume at the edges.
        occupancy = self.vessel * (self.cavity & ~self.lesion if kind == "effusion" else self.cavity)
        occupancy = np.where(self.airway_wall > 0.5, 0, occupancy)
        vessel_hu = rng.uniform(20, 60)
        hu = np.where(occupancy > 0, np.maximum(hu, hu * (1 - occupancy) + vessel_hu * occupancy), hu)
        wall = self.airway_wall * self.inside
        hu = hu * (1 - wall) + 40 * wall
        lumen = self.lumen * self.inside
        hu = hu * (1 - lumen) - 1000 * lumen
        bone = self.bone & self.inside
        hu[bone] = self.bone_hu[bone]
        hu[self.disc & self.inside] = 90
        hu[self.cartilage & self.inside] = 130

        # Scanner: blur, then correlated noise.
        sigma = rng.uniform(0.6, 1.0)
        hu = ndimage.gaussian_filter(hu, (sigma, sigma, 0.5 * sigma))
        noise = ndimage.gaussian_filter(rng.standard_normal(self.shape, dtype=np.float32), (0.6, 0.6, 0))
        hu += noise * (rng.uniform(20, 40) / noise.std())

        label = np.zeros(self.shape, np.uint8)
        label[self.lung & self.left_side] = 1
        label[self.lung & ~self.left_side] = 2
        label[self.lesion] = 3
        return Phantom(hu.astype(np.float32), label, self.spacing)


# ---- datasets on disk ----------------------------------------------------------------------------------------


def lungs_with_lesions(label: np.ndarray, kind: str) -> np.ndarray:
    """Left (1) / right (2) lung including the lesions inside them, as the official Lung_Mask has it: each
    lesion voxel takes the side of the nearest lung voxel. A pleural effusion is outside the lungs."""
    if kind == "effusion" or not (label == 3).any():
        return np.where(label == 3, 0, label).astype(np.uint8)
    nearest = ndimage.distance_transform_edt(~np.isin(label, (1, 2)), return_distances=False, return_indices=True)
    return np.where(label == 3, label[tuple(nearest)], label).astype(np.uint8)


def official_file_stem(case_id: str) -> str:
    """The image file name of a case in the Zenodo download (Coronacases images are `coronacases_org_NNN`)."""
    return case_id.replace("coronacases_", "coronacases_org_", 1) if case_id.startswith("coronacases_") else case_id


def _official_affine(spacing, shape) -> np.ndarray:
    """LPS-like affine (negative x and y diagonal) for an array flipped along x and y, same world positions as
    the canonical affine: the importer must reorient it back."""
    affine = affine_from_spacing(spacing)
    affine[0, 0], affine[1, 1] = -spacing[0], -spacing[1]
    affine[0, 3], affine[1, 3] = (shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1]
    return affine


def _write_official(out: Path, case_id: str, phantom: Phantom, kind: str) -> None:
    flip = (slice(None, None, -1), slice(None, None, -1), slice(None))
    affine = _official_affine(phantom.spacing, phantom.label.shape)
    if case_id.startswith("coronacases_"):  # raw HU, as the Coronacases scans ship
        image = np.clip(np.rint(phantom.image_hu), -1024, 3071).astype(np.int16)
    else:  # Radiopaedia cases ship already windowed to [-1250, 250] and scaled to 0..255
        image = np.rint(hu_to_0_255(phantom.image_hu)).astype(np.uint8)
    label = phantom.label
    masks = {
        "COVID-19-CT-Seg_20cases": (official_file_stem(case_id), image),
        "Lung_Mask": (case_id, lungs_with_lesions(label, kind)),
        "Infection_Mask": (case_id, (label == 3).astype(np.uint8)),
        "Lung_and_Infection_Mask": (case_id, label),
    }
    for folder, (stem, array) in masks.items():
        save_nifti(out / folder / f"{stem}.nii.gz", array[flip], affine)


def _official_complete(out: Path, cases: list[str]) -> bool:
    return all((out / folder / f"{official_file_stem(c) if folder == OFFICIAL_FOLDERS[0] else c}.nii.gz").is_file()
               for folder in OFFICIAL_FOLDERS for c in cases)


def write_phantom_dataset(
    out: Path,
    cases: int | list[str] = 20,
    seed: int = 0,
    layout: str = "canonical",
    kind: str = "covid",
    size: str = "demo",
    progress: bool = True,
) -> Path:
    """Write a phantom dataset into `out` (canonical layout with `dataset.json`, or the official download's).

    A rerun with the same arguments is a no-op once complete (and redoes an interrupted one); a non-empty folder
    holding anything else is refused.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {tuple(SIZES)}")
    cases = case_ids(kind, cases) if isinstance(cases, int) else [str(c) for c in cases]
    out = Path(out).expanduser()
    recipe = {"generator": "covlight.phantoms", "layout": layout, "kind": kind, "size": size, "seed": int(seed),
              "cases": cases}
    marker = out / MARKER
    if out.exists() and any(out.iterdir()):
        found = _read_marker(marker)
        if found != recipe:
            what = "files that are not a covlight phantom dataset"
            if found is not None:
                differences = [f"{k} {found.get(k)!r} (asked: {recipe[k]!r})" for k in recipe
                               if found.get(k) != recipe[k]]
                what = f"a different phantom dataset: {'; '.join(differences)}"
            raise DatasetError(f"{out} is not empty and holds {what}. Choose an empty or new folder for --out, "
                               f"or delete {out} first.")
        if (out / "dataset.json").is_file() if layout == "canonical" else _official_complete(out, cases):
            return out
    write_json(marker, recipe)

    entries = {}
    bar = tqdm(cases, unit="case", disable=not progress)
    for case_id in bar:
        bar.set_description(f"phantom {case_id}")
        phantom = make_phantom(case_id, seed, size=size, kind=kind)
        if layout == "official":
            _write_official(out, case_id, phantom, kind)
        else:
            entries[case_id] = write_case(out, case_id, hu_to_0_255(phantom.image_hu), phantom.label,
                                          affine_from_spacing(phantom.spacing), intensity="hu")
    if layout == "canonical":
        write_dataset_json(out, f"phantom_{kind}", entries, ["left_lung", "right_lung", "infection"],
                           source="covlight.phantoms", licence="CC0 (synthetic)",
                           description=f"synthetic chest CT phantoms ({kind}, {size} size, seed {seed})",
                           phantom={k: recipe[k] for k in ("kind", "size", "seed")})
    return out


def _read_marker(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


# ---- montage ---------------------------------------------------------------------------------------------------


def save_montage(phantom: Phantom, path: Path, title: str = "") -> Path:
    """Five axial slices and one coronal slice in the [-1250, 250] HU window with label contours, shown the
    radiological way (patient's right on the viewer's left, anterior up)."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone
    from matplotlib.lines import Line2D

    image, label, (sx, sy, sz) = phantom.image_hu, phantom.label, phantom.spacing
    lung_z = np.flatnonzero(np.isin(label, (1, 2, 3)).any(axis=(0, 1)))
    levels = [int(lung_z[0] + f * (lung_z[-1] - lung_z[0])) for f in (0.9, 0.72, 0.55, 0.38, 0.18)]
    column = int(np.argwhere(label > 0)[:, 1].mean())
    colours = {1: "#33b5ff", 2: "#ffb000", 3: "#ff2d2d"}
    fig = Figure(figsize=(12, 8.4), facecolor="black")
    axes = fig.subplots(2, 3)
    views = [(image[:, :, k], label[:, :, k], sy / sx, f"axial z={k}") for k in levels]
    views.append((image[:, column, :], label[:, column, :], sz / sx, f"coronal y={column}"))
    for ax, (img, lab, aspect, name) in zip(axes.ravel(), views, strict=True):
        # (x, second axis) -> rows top-down = second axis descending, columns = x descending (radiological)
        img, lab = img.T[::-1, ::-1], lab.T[::-1, ::-1]
        ax.imshow(img, cmap="gray", vmin=-1250, vmax=250, aspect=aspect, interpolation="bilinear")
        for value, colour in colours.items():
            if (lab == value).any():
                ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=0.9)
        ax.set_title(name, color="white", fontsize=10)
        ax.axis("off")
    handles = [Line2D([], [], color=c, label=n) for n, c in zip(("left lung", "right lung", "infection"),
                                                                     colours.values(), strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white")
    fig.suptitle(title or "phantom", color="white")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72, facecolor="black", pil_kwargs={"optimize": True})
    return path
