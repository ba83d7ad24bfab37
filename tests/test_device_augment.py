"""The elastic deformation on the training device: the synapse stays at the centre, the
deformation is in-plane, its parameters are in nm, and training with it stays reproducible
and resumes exactly."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_train import SMALL, manifest, only, run  # noqa: F401 (manifest: a fixture)

from ntclass.errors import NtclassError
from ntclass.settings import DeformAugment
from ntclass.train.device_augment import JITTER_TRUNCATION, DeviceDeform, iteration_generator

FAFB_DEFORM = {"enabled": True, "control_point_spacing": [160, 160, 160],
               "jitter_sigma": [0, 8, 8], "scale": [0.9, 1.1], "rotate": True, "p": 1.0}


def deform(shape=(8, 48, 48), voxel_size=(40, 4, 4), **settings) -> DeviceDeform:
    return DeviceDeform.from_config(
        DeformAugment.from_partial({**FAFB_DEFORM, **settings}, "training.augment.deform"),
        shape, voxel_size)


def test_the_synapse_stays_at_the_centre():
    d = deform()
    cz, cy, cx = d.context_shape()
    cubes = torch.zeros(16, 1, cz, cy, cx)
    # a bright spot of 3x3 voxels on the synapse, in every section
    cubes[:, :, :, cy // 2 - 1:cy // 2 + 2, cx // 2 - 1:cx // 2 + 2] = 1
    out = d(cubes, iteration_generator(0, 1))
    z, y, x = d.input_shape
    assert out.shape == (16, 1, z, y, x)
    assert torch.allclose(out[:, 0, :, y // 2, x // 2], torch.ones(16, z), atol=1e-4)
    # the spot's centre of mass is the centre voxel in every section
    weights = out[:, 0].clamp(min=0)
    ys = (weights.sum(dim=3) * torch.arange(y)).sum(dim=2) / weights.sum(dim=(2, 3))
    xs = (weights.sum(dim=2) * torch.arange(x)).sum(dim=2) / weights.sum(dim=(2, 3))
    assert (ys - y // 2).abs().max() < 0.2 and (xs - x // 2).abs().max() < 0.2


def test_the_deformation_is_in_plane():
    d = deform()
    cz, cy, cx = d.context_shape()
    # every section a different constant, plus a pattern in the plane
    z_values = torch.arange(cz, dtype=torch.float32).view(1, 1, cz, 1, 1) * 10
    pattern = torch.rand(1, 1, 1, cy, cx)
    out = d((z_values + pattern).expand(4, 1, cz, cy, cx).contiguous(),
            iteration_generator(3, 0))
    sections = torch.floor(out / 10).amin(dim=(0, 1, 3, 4))
    assert torch.equal(sections, torch.arange(d.input_shape[0], dtype=torch.float32))
    frac = out - torch.floor(out / 10) * 10
    assert frac.min() >= 0 and frac.max() <= 1  # in-plane values only, never mixed in z
    with pytest.raises(NtclassError, match="in-plane: give 0 for z"):
        deform(jitter_sigma=[40, 8, 8])


def displacements(d: DeviceDeform, n: int) -> torch.Tensor:
    """Per sample, the displacement (nm, y x) of every output voxel, without rotation and
    scale."""
    params = d.draw(n, torch.Generator().manual_seed(5))
    positions = d.source_positions(params)
    z, y, x = d.input_shape
    vy, vx = d.voxel_size[1:]
    qy = (torch.arange(y, dtype=torch.float64) - y // 2) * vy
    qx = (torch.arange(x, dtype=torch.float64) - x // 2) * vx
    return positions - torch.stack(torch.meshgrid(qy, qx, indexing="ij"), dim=-1)


@pytest.mark.parametrize("voxel_size, shape", [((40, 4, 4), (8, 96, 96)),
                                               ((40, 8, 8), (8, 48, 48))])
def test_jitter_is_in_nm_whatever_the_voxel_size(voxel_size, shape):
    """At a control point 160 nm from the synapse in y and x, the displacement has the
    configured sigma in nm (a normal truncated at 3 sigma), for 4 and 8 nm voxels alike."""
    d = deform(shape, voxel_size, rotate=False, scale=[1, 1])
    moved = displacements(d, 4000)
    z, y, x = shape
    at = moved[:, z // 2, y // 2 + 160 // voxel_size[1], x // 2 + 160 // voxel_size[2]]
    truncated = math.sqrt(1 - 2 * JITTER_TRUNCATION * math.exp(-JITTER_TRUNCATION**2 / 2)
                          / (math.sqrt(2 * math.pi) * math.erf(JITTER_TRUNCATION / 2**0.5)))
    assert at.std(dim=0).numpy() == pytest.approx([8 * truncated] * 2, rel=0.05)
    assert moved[:, :, y // 2, x // 2].abs().max() == 0  # none on the synapse's axis


def test_rotation_scale_and_probability_as_configured():
    d = deform(scale=[0.8, 1.25], p=0.3)
    params = d.draw(20000, torch.Generator().manual_seed(1))
    assert params["apply"].double().mean().item() == pytest.approx(0.3, abs=0.015)
    angles = params["angle"]
    assert angles.min() >= 0 and angles.max() < 2 * math.pi
    # uniform on the circle: the mean direction vanishes
    assert abs(torch.cos(angles).mean()) < 0.02 and abs(torch.sin(angles).mean()) < 0.02
    assert params["scale"].min() >= 0.8 and params["scale"].max() <= 1.25
    assert params["scale"].mean().item() == pytest.approx(1.025, abs=0.01)
    # context: the farthest rotated, shrunk and jittered position still inside
    cz, cy, cx = d.context_shape()
    positions = d.source_positions(d.draw(200, torch.Generator().manual_seed(2)))
    reach = positions.abs().amax(dim=(0, 1, 2, 3)) / torch.tensor([4.0, 4.0])
    assert reach[0] <= cy // 2 - 1 and reach[1] <= cx // 2 - 1


def test_seeded_by_iteration():
    d = deform()
    cubes = torch.rand(4, 1, *d.context_shape())
    a = d(cubes, iteration_generator(0, 7))
    assert torch.equal(a, d(cubes, iteration_generator(0, 7)))
    assert not torch.equal(a, d(cubes, iteration_generator(0, 8)))
    assert not torch.equal(a, d(cubes, iteration_generator(1, 7)))


WITH_DEFORM = replace(SMALL, augment=only(deform={**FAFB_DEFORM, "scale": [0.9, 1.1]}),
                      validate_every=0)


def test_training_with_the_device_deformation_is_reproducible_and_resumes(
        manifest, tmp_path):  # noqa: F811
    a = torch.load(run(manifest, tmp_path, WITH_DEFORM, "a") / "model.pt", weights_only=True)
    b_dir = run(manifest, tmp_path, WITH_DEFORM, "b")
    b = torch.load(b_dir / "model.pt", weights_only=True)
    # killed after the checkpoint of iteration 3: the rerun resumes there
    (folder,) = (b_dir / "checkpoints").iterdir()
    (folder / "model_checkpoint_6").unlink()
    c = torch.load(run(manifest, tmp_path, WITH_DEFORM, "b") / "model.pt", weights_only=True)
    plain = torch.load(run(manifest, tmp_path, replace(WITH_DEFORM, augment=only()), "p") /
                       "model.pt", weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        assert torch.equal(a["state_dict"][key], c["state_dict"][key]), key
    assert any(not torch.equal(a["state_dict"][k], plain["state_dict"][k])
               for k in a["state_dict"])


def test_raw_value_augmentations_as_gunpowder_draws_them():
    """Per-section intensity scale and shift in their intervals, noise with its variance
    and probability, missing and low-contrast sections with theirs, the eight mirror and
    transpose outcomes equally often."""
    from ntclass.train.device_augment import DeviceAugment

    shape = (8, 16, 16)
    n = 4000

    def run_only(**augment):
        aug = DeviceAugment.from_config(only(**augment), shape, (40, 4, 4))
        cubes = torch.rand(n, 1, *shape) * 0.5 + 0.25  # in [0.25, 0.75]: no clipping
        return cubes, (aug(cubes, torch.Generator().manual_seed(0)) + 1) / 2

    cubes, out = run_only(intensity={"enabled": True, "scale": [0.9, 1.1],
                                     "shift": [-0.1, 0.1]})
    before = cubes - cubes.mean(dim=(3, 4), keepdim=True)
    after = out - out.mean(dim=(3, 4), keepdim=True)
    scale = (after * before).sum(dim=(3, 4)) / (before**2).sum(dim=(3, 4))
    shift = (out - cubes).mean(dim=(3, 4))
    assert scale.min() >= 0.9 - 1e-4 and scale.max() <= 1.1 + 1e-4
    assert shift.min() >= -0.1 - 1e-4 and shift.max() <= 0.1 + 1e-4
    assert scale.std().item() == pytest.approx(0.2 / 12**0.5, rel=0.05)  # uniform

    cubes, out = run_only(noise={"enabled": True, "variance": 0.001, "p": 0.5})
    residual = (out - cubes).flatten(1)
    noisy = residual.abs().amax(dim=1) > 0
    assert noisy.double().mean().item() == pytest.approx(0.5, abs=0.03)
    assert residual[noisy].std().item() == pytest.approx(0.001**0.5, rel=0.02)

    cubes, out = run_only(defects={"enabled": True, "prob_missing": 0.05,
                                   "prob_low_contrast": 0.1, "contrast_scale": 0.1})
    sections = out[:, 0].flatten(2)
    missing = (sections == 0).all(dim=2)
    spread = sections.std(dim=2) / cubes[:, 0].flatten(2).std(dim=2)
    low = ~missing & (spread < 0.2)
    assert missing.double().mean().item() == pytest.approx(0.05, abs=0.005)
    assert low.double().mean().item() == pytest.approx(0.1, abs=0.007)
    assert spread[low].mean().item() == pytest.approx(0.1, abs=1e-3)

    marker = torch.zeros(n, 1, *shape)
    marker[:, :, :, 0, 1] = 1  # one voxel next to a corner: its place tells the outcome
    aug = DeviceAugment.from_config(only(mirror_transpose=True), shape, (40, 4, 4))
    out = aug(marker, torch.Generator().manual_seed(0))
    where = (out[:, 0, 0] > 0).flatten(1).int().argmax(dim=1)
    counts = torch.bincount(where, minlength=16 * 16)
    counts = counts[counts > 0]
    assert len(counts) == 8 and (counts.double() / n - 1 / 8).abs().max() < 0.02


def test_raw_moved_as_stored_gives_the_same_input(manifest):  # noqa: F811
    """uint8 cubes mapped on the device equal the data path's own float mapping."""
    from test_train import ALL_AUGMENTATIONS, one_batch

    as_floats = replace(SMALL, augment=only(**ALL_AUGMENTATIONS))
    as_stored = replace(as_floats, intensity={"uint8": [0.0, 255.0]})
    assert np.array_equal(one_batch(manifest, as_floats), one_batch(manifest, as_stored))
