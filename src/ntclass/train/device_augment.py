"""Synister's augmentations on the training device, on whole batches, right before the
model (`DeviceAugment`): the elastic deformation with in-plane rotation (`DeviceDeform`),
and the augmentations of raw values.

The data path (gunpowder) provides cubes with enough context around the synapse
(`context_shape`); `DeviceDeform` samples the model's cubes from them along a random
in-plane transform per sample: a rotation about the z axis, a scale, and a smooth elastic
displacement (gaussian jitter at control points, interpolated), all in nm as configured.
There is no displacement on the axis through the synapse (rotation and scale are about it,
the jitter of its control points is 0), so the synapse stays at the centre of every
section. Sections are never mixed: each output section is sampled from its own input
section (2D sampling). The random draws come from a CPU generator seeded by (seed,
iteration): a run is reproducible and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ntclass.errors import NtclassError
from ntclass.intensity import unit_tensor
from ntclass.settings import Augment, DeformAugment

# jitter is drawn from a normal distribution truncated at this many sigmas, so that the
# context the data path provides always covers every sampled position
JITTER_TRUNCATION = 3.0


@dataclass(frozen=True)
class DeviceDeform:
    input_shape: tuple[int, int, int]  # voxels, z y x: the model's cubes
    voxel_size: tuple[int, int, int]  # nm
    control_point_spacing: tuple[float, float, float]  # nm
    jitter_sigma: tuple[float, float]  # nm, y x
    scale: tuple[float, float]  # > 1 magnifies
    rotate: bool
    p: float

    @classmethod
    def from_config(cls, deform: DeformAugment, input_shape: Sequence[int],
                    voxel_size: Sequence[int]) -> DeviceDeform | None:
        """The deformation of `training.augment.deform`, or None when it is off."""
        if not deform.enabled:
            return None
        sigma = [float(s) for s in deform.jitter_sigma]
        if sigma[0] != 0:
            raise NtclassError(
                f"training.augment.deform.jitter_sigma {list(deform.jitter_sigma)} moves voxels "
                "across sections; the deformation is in-plane: give 0 for z")
        low, high = (float(v) for v in deform.scale)
        if not 0 < low <= high:
            raise NtclassError(f"training.augment.deform.scale {list(deform.scale)} must "
                               "be an interval of positive factors, low to high")
        return cls(tuple(int(v) for v in input_shape), tuple(int(v) for v in voxel_size),
                   tuple(float(v) for v in deform.control_point_spacing),
                   (sigma[1], sigma[2]), (low, high), deform.rotate, float(deform.p))

    def context_shape(self) -> tuple[int, int, int]:
        """Voxels (z, y, x) of the cube the data path must provide, centred like the
        model's cube (the synapse in voxel shape // 2)."""
        shape = np.array(self.input_shape)
        vs = np.array(self.voxel_size, dtype=float)
        # farthest output voxel from the centre, in nm (y, x)
        reach = np.maximum(shape // 2, shape - 1 - shape // 2)[1:] * vs[1:] / self.scale[0]
        if self.rotate:
            reach = np.full(2, math.hypot(*reach))
        reach = reach + 2 * JITTER_TRUNCATION * np.array(self.jitter_sigma)
        half = np.ceil(reach / vs[1:]).astype(int) + 2  # + interpolation neighbours
        return (int(shape[0]), *(int(2 * h + 1) for h in half))

    def control_points(self) -> list[np.ndarray]:
        """Per axis (z, y, x), the control points' positions in nm relative to the centre:
        spaced by control_point_spacing, one on the centre, covering the cube."""
        points = []
        for n, v, spacing in zip(self.input_shape, self.voxel_size, self.control_point_spacing):
            reach = max(n // 2, n - 1 - n // 2) * v
            k = max(1, math.ceil(reach / spacing))
            points.append(np.arange(-k, k + 1) * spacing)
        return points

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random parameters of `n` samples (CPU tensors): whether it is deformed, the
        angle, the scale, and the jitter of every control point (nm, normal with sigma
        jitter_sigma truncated at 3 sigma; 0 on the axis through the synapse, so that it
        stays at the centre in every section)."""
        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

        grid = [len(p) for p in self.control_points()]
        jitter = torch.randn(n, 2, *grid, generator=generator, dtype=torch.float64)
        jitter = jitter.clamp_(-JITTER_TRUNCATION, JITTER_TRUNCATION)
        jitter *= torch.tensor(self.jitter_sigma, dtype=torch.float64).view(1, 2, 1, 1, 1)
        jitter[:, :, :, grid[1] // 2, grid[2] // 2] = 0
        return {
            "apply": torch.rand(n, generator=generator, dtype=torch.float64) < self.p,
            "angle": uniform(0, 2 * math.pi) if self.rotate else torch.zeros(
                n, dtype=torch.float64),
            "scale": uniform(*self.scale),
            "jitter": jitter,  # nm, (n, 2: y x, control points z y x)
        }

    def _hat_weights(self, device, dtype) -> list[torch.Tensor]:
        """Per axis, linear interpolation weights of each voxel on the control points."""
        weights = []
        for n, v, spacing, points in zip(self.input_shape, self.voxel_size,
                                         self.control_point_spacing, self.control_points()):
            voxels = (np.arange(n) - n // 2) * v
            w = np.clip(1 - np.abs(voxels[:, None] - points[None, :]) / spacing, 0, None)
            weights.append(torch.as_tensor(w, device=device, dtype=dtype))
        return weights

    def source_positions(self, params: Mapping[str, torch.Tensor],
                         device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """For every output voxel of every sample, where it is read from in the context
        cube, in nm relative to the centre: (n, z, y, x, 2: y x)."""
        _, y, x = self.input_shape
        vy, vx = self.voxel_size[1:]
        qy = (torch.arange(y, device=device, dtype=dtype) - y // 2) * vy
        qx = (torch.arange(x, device=device, dtype=dtype) - x // 2) * vx
        n = len(params["angle"])
        angle, scale = (params[k].to(device, dtype).view(n, 1, 1) for k in ("angle", "scale"))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        py = cos * qy[:, None] - sin * qx[None, :]
        px = sin * qy[:, None] + cos * qx[None, :]
        wz, wy, wx = self._hat_weights(device, dtype)
        # separable: one axis at a time (a 3D einsum at once is 100x slower)
        field = torch.einsum("ndabc,kc->ndabk", params["jitter"].to(device, dtype), wx)
        field = torch.einsum("ndabk,jb->ndajk", field, wy)
        field = torch.einsum("ndajk,ia->nijkd", field, wz)
        return field + torch.stack([py, px], dim=-1)[:, None]

    def __call__(self, cubes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n, 1, *context_shape) cubes on any device -> (n, 1, *input_shape)."""
        n, _, cz, cy, cx = cubes.shape
        z, y, x = self.input_shape
        if (cz, cy, cx) != self.context_shape():
            raise ValueError(f"cubes of shape {tuple(cubes.shape[2:])}, expected "
                             f"{self.context_shape()}")
        params = self.draw(n, generator)
        z0, y0, x0 = cz // 2 - z // 2, cy // 2 - y // 2, cx // 2 - x // 2
        out = cubes[:, :, z0:z0 + z, y0:y0 + y, x0:x0 + x].clone()
        chosen = torch.nonzero(params["apply"]).flatten()
        if len(chosen) == 0:
            return out
        positions = self.source_positions({k: v[chosen] for k, v in params.items()},
                                          cubes.device, torch.float32)
        # grid_sample's normalised coordinates (align_corners): -1 and 1 are the first and
        # last voxel centres, so voxel c // 2 (the synapse) is (c // 2) / (c - 1) * 2 - 1;
        # its last axis is (x, y)
        vs = self.voxel_size[1:]
        for axis, c in enumerate((cy, cx)):
            positions[..., axis].mul_(2 / (vs[axis] * (c - 1))).add_(2 * (c // 2) / (c - 1) - 1)
        m = len(chosen)
        sections = cubes[chosen, 0, z0:z0 + z].reshape(m * z, 1, cy, cx)
        sampled = F.grid_sample(sections.float(), positions.flip(-1).reshape(m * z, y, x, 2),
                                mode="bilinear", padding_mode="border", align_corners=True)
        out[chosen] = sampled.reshape(m, 1, z, y, x).to(out.dtype)
        return out


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator of one training iteration's device augmentations."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration + 7)


@dataclass(frozen=True)
class DeviceAugment:
    """Synister's augmentations of raw values, and the deformation, on the training device:
    the data path delivers cubes in [0, 1] (with context when the deformation is on); this
    returns the model's input in [-1, 1]. In order: elastic deformation, mirror and
    transpose in y/x, per-section intensity scale and shift, gaussian noise, missing and
    low-contrast sections, each as gunpowder's node of the same name does it (values
    clipped to [0, 1] after intensity and noise)."""

    input_shape: tuple[int, int, int]
    deform: DeviceDeform | None = None
    mirror_transpose: bool = False
    intensity: tuple[float, float, float, float] | None = None  # scale lo hi, shift lo hi
    noise: tuple[float, float] | None = None  # variance, p
    defects: tuple[float, float, float] | None = None  # p missing, p low contrast, scale
    # raw values low..high map to [0, 1] here (the data path delivered them as stored)
    raw_range: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, augment: Augment, input_shape: Sequence[int],
                    voxel_size: Sequence[int],
                    raw_range: tuple[float, float] | None = None) -> DeviceAugment:
        intensity, noise, defects = augment.intensity, augment.noise, augment.defects
        return cls(
            tuple(int(v) for v in input_shape),
            DeviceDeform.from_config(augment.deform, input_shape, voxel_size),
            augment.mirror_transpose,
            (*intensity.scale, *intensity.shift) if intensity.enabled else None,
            (float(noise.variance), float(noise.p)) if noise.enabled else None,
            (float(defects.prob_missing), float(defects.prob_low_contrast),
             float(defects.contrast_scale)) if defects.enabled else None,
            raw_range)

    def context_shape(self) -> tuple[int, int, int]:
        """Voxels (z, y, x) of the cubes the data path provides."""
        return self.deform.context_shape() if self.deform else self.input_shape

    def __call__(self, cubes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n, 1, *context_shape) cubes in [0, 1] (or raw values, with `raw_range`) ->
        (n, 1, *input_shape) in [-1, 1]."""
        n = cubes.shape[0]
        if self.raw_range is not None:
            cubes = unit_tensor(cubes, *self.raw_range)
        if self.deform is not None:
            x = self.deform(cubes, generator)
        else:  # later steps work in place: never on the caller's tensor
            x = cubes if self.raw_range is not None else cubes.clone()
        z = x.shape[2]
        if self.mirror_transpose:
            x = self._mirror_transpose(x, generator)
        if self.intensity is not None:
            s0, s1, h0, h1 = self.intensity
            scale = _uniform(generator, (n, 1, z, 1, 1), s0, s1).to(x.device)
            shift = _uniform(generator, (n, 1, z, 1, 1), h0, h1).to(x.device)
            mean = x.mean(dim=(3, 4), keepdim=True)
            x = ((x - mean) * scale + mean + shift).clamp_(0, 1)
        if self.noise is not None:
            variance, p = self.noise
            chosen = (torch.rand(n, generator=generator) < p).to(x.device)
            # drawn on the device from a seed of the iteration's generator: moving a
            # batch of noise from the CPU would cost more than the noise itself
            device_generator = torch.Generator(device=x.device).manual_seed(
                int(torch.randint(2**62, (1,), generator=generator)))
            noise = torch.randn(x.shape, generator=device_generator, device=x.device)
            x = torch.where(chosen.view(n, 1, 1, 1, 1), x + noise * math.sqrt(variance), x)
            x = x.clamp_(0, 1)
        if self.defects is not None:
            missing, low, contrast = self.defects
            r = torch.rand(n, 1, z, 1, 1, generator=generator).to(x.device)
            mean = x.mean(dim=(3, 4), keepdim=True)
            x = torch.where(r < missing, torch.zeros_like(x), x)
            x = torch.where((r >= missing) & (r < missing + low),
                            mean + (x - mean) * contrast, x)
        return x.mul_(2).sub_(1)

    def _mirror_transpose(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """gunpowder's SimpleAugment(mirror_only=(y, x), transpose_only=(y, x)): each axis
        mirrored with probability 1/2, y and x swapped with probability 1/2 (square
        sections only)."""
        n = x.shape[0]
        mirror = torch.rand(n, 2, generator=generator) < 0.5
        swap = torch.rand(n, generator=generator) < 0.5
        square = x.shape[3] == x.shape[4]
        out = torch.empty_like(x)
        for i in range(n):
            sample = x[i]
            dims = [d for d, m in zip((2, 3), mirror[i].tolist()) if m]
            if dims:
                sample = sample.flip(dims)
            if square and bool(swap[i]):
                sample = sample.transpose(2, 3)
            out[i] = sample
        return out


def _uniform(generator: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)
