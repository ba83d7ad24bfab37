"""The synthetic demo dataset: EM-like raw with NT-dependent synapses.

Each synapse is a dark pre-synaptic density on a membrane with a vesicle cloud on its
pre-synaptic side. The classes differ in combinations of vesicle type (clear or dense-core),
size, shape, count and core darkness, with jitter and a share of vesicles drawn from another
class, so that no single trivial cue (such as mean brightness) gives the class away.

Written in both layouts users have: one zarr volume plus a synapse table, and per-class
folders of CREMI-format HDF5 crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import ndimage

from ntclass.errors import NtclassError
from ntclass.io import atomic_path, write_csv
from ntclass.volumes import write_zarr_volume

VOXEL_SIZE = (40, 4, 4)
RAW_DATASET = "volumes/raw/s0"


@dataclass(frozen=True)
class VesicleStyle:
    dense_core: bool
    radius_nm: float  # mean vesicle radius
    count: float  # mean vesicles per synapse
    core_value: float  # intensity of the dense core (ignored for clear vesicles)
    aspect: float = 1.0  # >1: pleomorphic (elongated) vesicles
    cloud_radius_px: float = 14.0


STYLES = {
    # clear vesicles: small and many, large, or elongated (pleomorphic)
    "acetylcholine": VesicleStyle(False, 19.0, 30, 0, 1.0, 13.0),
    "gaba": VesicleStyle(False, 30.0, 14, 0, 1.0, 14.0),
    "glutamate": VesicleStyle(False, 23.0, 16, 0, 2.0, 12.0),
    # dense-core vesicles: large or small, dark or light core
    "serotonin": VesicleStyle(True, 36.0, 10, 35, 1.0, 14.0),
    "dopamine": VesicleStyle(True, 23.0, 14, 40, 1.0, 12.0),
    "octopamine": VesicleStyle(True, 37.0, 10, 130, 1.0, 14.0),
    "tyramine": VesicleStyle(True, 22.0, 12, 120, 1.0, 12.0),
    # histamine is used by some fly datasets (BANC): clear, large and sparse
    "histamine": VesicleStyle(False, 30.0, 9, 0, 1.3, 15.0),
}

BACKGROUND, MEMBRANE, DENSITY = 150.0, 70.0, 45.0
VESICLE_MEMBRANE, VESICLE_LUMEN, HALO = 85.0, 185.0, 175.0


@dataclass(frozen=True)
class DemoSpec:
    classes: tuple[str, ...]
    shape: tuple[int, int, int] = (48, 832, 832)
    neurons_per_class: int = 12
    synapses_per_neuron: tuple[int, int] = (4, 12)
    hemilineages_per_class: int = 3
    cremi_crop: tuple[int, int, int] = (12, 80, 80)
    mix_fraction: float = 0.05
    noise: float = 8.0
    seed: int = 1


def _synapse_slots(spec: DemoSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Voxel locations on a jittered grid, away from the edges, `n` of them."""
    margin = np.array(spec.cremi_crop) // 2 + (1, 4, 4)
    slot = np.array([6, 56, 56])
    usable = np.array(spec.shape) - 2 * margin
    counts = usable // slot
    n_slots = int(np.prod(counts))
    if n > n_slots:
        raise NtclassError(
            f"demo.shape {list(spec.shape)} has room for {n_slots} synapses, but "
            f"{n} were asked for; enlarge demo.shape or lower demo.neurons_per_class")
    chosen = rng.choice(n_slots, size=n, replace=False)
    idx = np.stack(np.unravel_index(chosen, counts), axis=1)
    centre = margin + idx * slot + slot // 2
    jitter = rng.integers(-np.array([1, 8, 8]), np.array([2, 9, 9]), size=(n, 3))
    return centre + jitter


def _background(spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """Textured neuropil: smooth field whose zero crossings are membranes."""
    field = ndimage.gaussian_filter(
        rng.standard_normal(spec.shape).astype(np.float32), sigma=(0.8, 14, 14))
    field /= field.std() + 1e-6
    membranes = np.exp(-((field / 0.12) ** 2))
    texture = ndimage.gaussian_filter(
        rng.standard_normal(spec.shape).astype(np.float32), sigma=(0.5, 2, 2))
    texture /= texture.std() + 1e-6
    image = BACKGROUND + 12.0 * texture
    image -= (BACKGROUND - MEMBRANE) * membranes
    return image


def _stamp_disk(image: np.ndarray, z: int, cy: float, cx: float, radius: float,
                value: float, aspect: float = 1.0, angle: float = 0.0,
                ring: float | None = None) -> None:
    """Paint a (possibly elongated) disk, or a ring of width `ring`, into section z."""
    if not 0 <= z < image.shape[0] or radius <= 0.3:
        return
    r = int(np.ceil(radius * aspect)) + 2
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, image.shape[1])
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, image.shape[2])
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dy + s * dx) / aspect, -s * dy + c * dx
    d = np.sqrt(u * u + v * v) / radius
    mask = np.abs(d - 1.0) < ring / radius if ring is not None else d < 1.0
    image[z, y0:y1, x0:x1][mask] = value


def _draw_vesicle(image: np.ndarray, centre: np.ndarray, style: VesicleStyle,
                  radius_nm: float, core_value: float, rng: np.random.Generator) -> None:
    angle = rng.uniform(0, np.pi)
    aspect = style.aspect * rng.uniform(0.85, 1.15)
    cz, cy, cx = centre
    for z in range(int(np.floor(cz - radius_nm / 40)), int(np.ceil(cz + radius_nm / 40)) + 1):
        h = (z - cz) * VOXEL_SIZE[0]
        if abs(h) >= radius_nm:
            continue
        rho = np.sqrt(radius_nm**2 - h**2) / VOXEL_SIZE[1]
        fill = HALO if style.dense_core else VESICLE_LUMEN
        _stamp_disk(image, z, cy, cx, rho, fill, aspect, angle)
        _stamp_disk(image, z, cy, cx, rho, VESICLE_MEMBRANE, aspect, angle, ring=0.9)
        if style.dense_core:
            _stamp_disk(image, z, cy, cx, 0.6 * rho, core_value, aspect, angle)


def _draw_synapse(image: np.ndarray, loc: np.ndarray, style: VesicleStyle,
                  mix_styles: list[VesicleStyle], mix_fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Draw one synapse at voxel `loc`; return the voxel location of its post-synaptic site."""
    theta = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(theta), np.cos(theta)])  # y, x: towards the pre-synaptic side
    z, y, x = loc
    # synaptic cleft: two membranes across the direction, the density on the pre side
    for dz in (-1, 0, 1):
        for offset in (-3.0, 3.0):
            cy, cx = y - direction[0] * offset, x - direction[1] * offset
            _stamp_disk(image, z + dz, cy, cx, 18.0, MEMBRANE, aspect=0.08,
                        angle=theta)
    for dz in (0, 1) if rng.random() < 0.5 else (-1, 0):
        _stamp_disk(image, z + dz, y, x, 7.0, DENSITY, aspect=0.35, angle=theta)

    n = max(3, rng.poisson(style.count * rng.uniform(0.8, 1.2)))
    cloud = np.array([z, y + direction[0] * 11, x + direction[1] * 11])
    size_jitter = rng.normal(1.0, 0.08)
    core_jitter = rng.normal(0.0, 12.0)
    for _ in range(n):
        s = mix_styles[rng.integers(len(mix_styles))] if rng.random() < mix_fraction else style
        r = style.cloud_radius_px * np.sqrt(rng.random())
        phi = rng.uniform(0, 2 * np.pi)
        centre = cloud + (rng.normal(0, 0.8), r * np.sin(phi), r * np.cos(phi))
        radius = s.radius_nm * size_jitter * rng.normal(1.0, 0.08)
        _draw_vesicle(image, centre, s, radius, s.core_value + core_jitter, rng)
    post = np.array([z, y - direction[0] * 10, x - direction[1] * 10])
    return np.round(post).astype(int)


def _finish(image: np.ndarray, spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """Blur, per-section gain and offset, noise: the acquisition."""
    image = ndimage.gaussian_filter(image, sigma=(0, 0.7, 0.7))
    gain = rng.normal(1.0, 0.08, size=(spec.shape[0], 1, 1))
    shift = rng.normal(0.0, 10.0, size=(spec.shape[0], 1, 1))
    image = (image - 128.0) * gain + 128.0 + shift
    image += rng.normal(0.0, spec.noise, size=spec.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synapses(spec: DemoSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Neurons (one NT each) in hemilineages, several synapses each; locations in voxels."""
    rows = []
    neuron_id = 1000
    neurons = []
    for c, nt in enumerate(spec.classes):
        for k in range(spec.neurons_per_class):
            neuron_id += 1
            hemilineage = f"HL{c}{k % spec.hemilineages_per_class}_{nt[:3]}"
            neurons.append(neuron_id)
            lo, hi = spec.synapses_per_neuron
            for _ in range(int(rng.integers(lo, hi + 1))):
                rows.append((nt, neuron_id, hemilineage))
    df = pd.DataFrame(rows, columns=["nt", "pre_id", "hemilineage"])
    df = df.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)
    df.insert(0, "synapse_id", np.arange(1, len(df) + 1, dtype=np.int64))
    posts = rng.choice(neurons, size=len(df))
    clash = posts == df["pre_id"].to_numpy()
    posts[clash] = np.roll(np.array(neurons), 1)[np.searchsorted(neurons, posts[clash])]
    df["post_id"] = posts.astype(np.int64)
    return df


def generate(spec: DemoSpec) -> tuple[np.ndarray, pd.DataFrame]:
    """Return the raw volume (uint8, z y x) and the synapse table (locations in nm)."""
    unknown = [c for c in spec.classes if c not in STYLES]
    if unknown:
        raise NtclassError(
            f"the demo data know no class '{unknown[0]}'; demo classes are {sorted(STYLES)}")
    rng = np.random.default_rng(spec.seed)
    synapses = make_synapses(spec, rng)
    locs = _synapse_slots(spec, rng, len(synapses))
    image = _background(spec, rng)
    styles = [STYLES[c] for c in spec.classes]
    posts = []
    for nt, loc in zip(synapses["nt"], locs):
        style = STYLES[nt]
        others = [s for s in styles if s is not style]
        posts.append(_draw_synapse(image, loc, style, others, spec.mix_fraction, rng))
    raw = _finish(image, spec, rng)
    centre_nm = (locs + 0.5) * VOXEL_SIZE
    synapses[["z", "y", "x"]] = centre_nm
    synapses[["post_z", "post_y", "post_x"]] = (np.array(posts) + 0.5) * VOXEL_SIZE
    return raw, synapses


def write_cremi_crop(path: Path, raw: np.ndarray, begin: np.ndarray, synapse: pd.Series,
                     ) -> None:
    """One CREMI-format file holding the crop around one synapse and its partner site."""
    offset_nm = begin * np.array(VOXEL_SIZE)
    pre = np.array([synapse.z, synapse.y, synapse.x]) - offset_nm
    post = np.array([synapse.post_z, synapse.post_y, synapse.post_x]) - offset_nm
    post_annotation = int(synapse.synapse_id) + 10**9
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("volumes/raw", data=raw, compression="gzip")
        ds.attrs["resolution"] = np.array(VOXEL_SIZE, dtype=np.float64)
        ds.attrs["offset"] = offset_nm.astype(np.float64)
        f["annotations/ids"] = np.array([synapse.synapse_id, post_annotation], dtype=np.uint64)
        f["annotations/locations"] = np.stack([pre, post]).astype(np.float64)
        f["annotations/types"] = np.array(["presynaptic_site", "postsynaptic_site"],
                                          dtype=h5py.string_dtype())
        f["annotations/presynaptic_site/partners"] = np.array(
            [[synapse.synapse_id, post_annotation]], dtype=np.uint64)
        # ntclass extension: the neuron (segment) each annotation belongs to
        f["annotations/neuron_ids"] = np.array([synapse.pre_id, synapse.post_id],
                                               dtype=np.uint64)
        f["annotations/hemilineages"] = np.array([synapse.hemilineage, ""],
                                                 dtype=h5py.string_dtype())
        f["annotations"].attrs["offset"] = offset_nm.astype(np.float64)


def write_demo(out_dir: str | os.PathLike, spec: DemoSpec) -> dict[str, str]:
    """Write volume.zarr, synapses.csv and cremi/<class>/<id>.hdf under `out_dir`."""
    out_dir = Path(out_dir)
    raw, synapses = generate(spec)
    crop = np.array(spec.cremi_crop)
    with atomic_path(out_dir / "cremi", is_dir=True) as tmp:
        for syn in synapses.itertuples(index=False):
            v = (np.array([syn.z, syn.y, syn.x]) / VOXEL_SIZE).astype(int)
            begin = v - crop // 2
            cube = raw[tuple(slice(b, b + s) for b, s in zip(begin, crop))]
            (tmp / syn.nt).mkdir(exist_ok=True)
            write_cremi_crop(tmp / syn.nt / f"{syn.synapse_id}.hdf", cube, begin, syn)
    with atomic_path(out_dir / "volume.zarr", is_dir=True) as tmp:
        write_zarr_volume(tmp, RAW_DATASET, raw, VOXEL_SIZE)
    table = synapses[["synapse_id", "z", "y", "x", "nt", "pre_id", "post_id", "hemilineage"]]
    write_csv(table, out_dir / "synapses.csv")
    return {"volume": str(out_dir / "volume.zarr"), "table": str(out_dir / "synapses.csv"),
            "cremi": str(out_dir / "cremi")}
