"""The anatomy of a phantom: body wall, skeleton, mediastinum, lungs, airways and pulmonary vessels.

Built in millimetres in a patient frame -- u towards the patient's right, v anterior, z superior from the lowest
slice -- and sampled on each case's own grid, so a phantom looks alike at any spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


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


def smooth_noise(rng, shape, spacing, scale_mm: float) -> np.ndarray:
    """Unit-variance Gaussian-filtered noise with correlation length ~scale_mm, filtered on a coarse grid (cheap)."""
    step = np.maximum(1.0, scale_mm / 2.0 / np.asarray(spacing))
    coarse = tuple(int(np.ceil(n / s)) + 2 if s > 1 else n for n, s in zip(shape, step, strict=True))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32),
                                    scale_mm / (np.asarray(spacing) * step), mode="wrap")
    if coarse != tuple(shape):
        field = ndimage.zoom(field, np.asarray(shape) / np.asarray(coarse), order=1)
    return (field - field.mean()) / (field.std() + 1e-6)


class Anatomy:
    """One phantom's anatomy; each method adds one part (state shared as attributes, all in mm)."""

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
        return smooth_noise(self.rng, self.shape, self.spacing, scale_mm)

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

    def build(self) -> None:
        """Every part, in the order each needs the ones before; then the fine texture the lesions share."""
        self.body()
        self.skeleton()
        self.layout()
        self.diaphragm()
        self.mediastinum()
        self.lungs()
        self.airways()
        self.vessels()
        self.texture = self.field(4)  # fine texture, shared by regions that do not overlap
