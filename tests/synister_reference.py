"""Synister's VGG as Synister builds it, written here from the published definition of
`funlib.learn.torch.models.Vgg3D` (the reference the `vgg3d` architecture must match),
gunpowder-format checkpoints of it, and Synister's crop (get_raw) in the arithmetic of the
daisy it ran on."""

from __future__ import annotations

import numpy as np
import torch


class SynisterVgg3D(torch.nn.Module):
    def __init__(self, input_size, fmaps=32, downsample_factors=((2, 2, 2),) * 4,
                 fmap_inc=(2, 2, 2, 2), n_convolutions=(2, 2, 2, 2), output_classes=6,
                 input_fmaps=1):
        super().__init__()
        current_fmaps, current_size = input_fmaps, tuple(input_size)
        features = []
        for i in range(len(downsample_factors)):
            features += [torch.nn.Conv3d(current_fmaps, fmaps, kernel_size=3, padding=1),
                         torch.nn.BatchNorm3d(fmaps), torch.nn.ReLU(inplace=True)]
            for _ in range(n_convolutions[i] - 1):
                features += [torch.nn.Conv3d(fmaps, fmaps, kernel_size=3, padding=1),
                             torch.nn.BatchNorm3d(fmaps), torch.nn.ReLU(inplace=True)]
            features += [torch.nn.MaxPool3d(downsample_factors[i])]
            current_fmaps = fmaps
            fmaps *= fmap_inc[i]
            current_size = tuple(int(c / d) for c, d in zip(current_size,
                                                            downsample_factors[i]))
        self.features = torch.nn.Sequential(*features)
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(int(np.prod(current_size)) * current_fmaps, 4096),
            torch.nn.ReLU(inplace=True), torch.nn.Dropout(),
            torch.nn.Linear(4096, 4096), torch.nn.ReLU(inplace=True), torch.nn.Dropout(),
            torch.nn.Linear(4096, output_classes))

    def forward(self, raw):
        shape = tuple(raw.shape)
        f = self.features(raw.reshape(shape[0], 1, *shape[1:]))
        return self.classifier(f.view(f.size(0), -1))


# Synister's FAFB production model: its class order, and its downsampling
SYNISTER_CLASSES = ["gaba", "acetylcholine", "glutamate", "serotonin", "octopamine",
                    "dopamine"]
DOWNSAMPLE = ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))


def synister_model(input_shape, fmaps: int = 4, seed: int = 0, gain: float = 1.0
                   ) -> SynisterVgg3D:
    """A reference model with random weights and non-trivial BatchNorm statistics. At
    PyTorch's initialisation its probabilities hardly depend on the cube (a one-voxel
    shift moves them by about 1e-6): `gain` scales the classifier's weights so that they
    do (8: about 1e-3)."""
    torch.manual_seed(seed)
    model = SynisterVgg3D(input_shape, fmaps=fmaps, downsample_factors=DOWNSAMPLE,
                          output_classes=len(SYNISTER_CLASSES))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(gain)
    return model.eval()


def save_gunpowder_checkpoint(model: torch.nn.Module, path, iteration: int = 1000) -> None:
    """As gunpowder's torch Train node saves it (model_checkpoint_<iteration>)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    torch.save({"iteration": iteration, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict()}, path)


def synister_probabilities(model: SynisterVgg3D, cubes: np.ndarray) -> np.ndarray:
    """Synister's prediction of uint8 cubes (N, z, y, x): raw / 255 * 2 - 1, the model,
    softmax (synister.utils.get_raw and predict)."""
    raw = cubes.astype(np.float32) / 255.0 * 2.0 - 1.0
    with torch.no_grad():
        return torch.softmax(model(torch.tensor(raw)), dim=1).numpy()


# The sources Synister's prediction ran on, transcribed below:
#   funkelab/synister 101df82840a7f8ab65d0b65217777b1e60a64148, synister/utils.py get_raw
#     (its locations: synister/predict_pipeline.py, `int(synapse["z"])` ...);
#   funkelab/daisy 5d0e6c9abbab6a86990d58b3e00ac4332a8ced46 (the commit synister's
#     singularity/Singularity builds; requirements.txt names the 0.3-dev branch, whose last
#     merge 1e251d2606616ef47340cf887549d7b586f102e4 and tag v0.2 d71f32d9 hold the same
#     code): daisy/coordinate.py Coordinate (every entry `int()`, `/` is `int(a / b)`),
#     daisy/roi.py Roi.snap_to_grid and daisy/array.py Array.to_ndarray.
SYNISTER_COMMIT = "101df82840a7f8ab65d0b65217777b1e60a64148"
DAISY_COMMIT = "5d0e6c9abbab6a86990d58b3e00ac4332a8ced46"


def daisy02_snap_closest(begin, shape, voxel_size) -> tuple[tuple, tuple]:
    """daisy/roi.py `Roi(begin, shape).snap_to_grid(voxel_size, mode='closest')` at
    DAISY_COMMIT, line for line: returns the snapped (offset, shape) in nm."""
    end = tuple(b + s for b, s in zip(begin, shape))  # Roi.get_end: offset + shape
    begin_in_voxel_fractions = (
        np.asarray(begin, dtype=np.float32) / np.asarray(voxel_size))
    end_in_voxel_fractions = (
        np.asarray(end, dtype=np.float32) / np.asarray(voxel_size))
    begin_in_voxel = np.round(begin_in_voxel_fractions)
    end_in_voxel = np.round(end_in_voxel_fractions)
    offset = tuple(b * v for b, v in zip(begin_in_voxel, voxel_size))
    shape = tuple((e - b) * v for b, e, v in zip(begin_in_voxel, end_in_voxel, voxel_size))
    # Roi(offset, shape): daisy.Coordinate makes every entry int()
    return tuple(int(x) for x in offset), tuple(int(x) for x in shape)


def synister_get_raw(data: np.ndarray, data_offset, voxel_size, locs, size) -> np.ndarray:
    """synister/utils.py get_raw at SYNISTER_COMMIT on daisy at DAISY_COMMIT, reading
    `data` (z, y, x) whose first voxel lies at `data_offset` nm: the uint8 cubes, before
    `raw / 255 * 2 - 1`. Stacking fails, as in Synister, when shapes differ."""
    size = tuple(int(s) for s in size)  # daisy.Coordinate(size)
    voxel_size = tuple(int(v) for v in voxel_size)
    size_nm = tuple(s * v for s, v in zip(size, voxel_size))
    half = tuple(int(s / 2) for s in size)  # Coordinate.__truediv__: int(a / other)
    raw = []
    for loc in locs:
        # predict_pipeline.py: (int(synapse["z"]), ...), then daisy.Coordinate(loc)
        loc = tuple(int(c) for c in loc)
        offset_nm = tuple(c - h * v for c, h, v in zip(loc, half, voxel_size))
        begin, shape = daisy02_snap_closest(offset_nm, size_nm, voxel_size)
        if shape[0] != size[0]:  # as get_raw compares them: nm against voxels
            shape = size_nm      # roi.set_shape(size_nm)
        raw.append(_daisy02_to_ndarray(data, data_offset, voxel_size, begin, shape))
    return np.stack(raw)


def _daisy02_to_ndarray(data, data_offset, voxel_size, begin, shape) -> np.ndarray:
    """daisy/array.py `dataset.to_ndarray(roi=roi, fill_value=0)` (get_raw's read of a ROI
    not contained in the dataset; `dataset[roi].to_ndarray()` reads the same voxels):
    zeros, with the part shared with the dataset copied in."""
    voxels = tuple(int(s / v) for s, v in zip(shape, voxel_size))  # (roi / voxel_size)
    out = np.zeros(voxels, dtype=data.dtype)
    first = [int((b - o) / v) for b, o, v in zip(begin, data_offset, voxel_size)]
    lo = [max(f, 0) for f in first]
    hi = [min(f + n, d) for f, n, d in zip(first, voxels, data.shape)]
    if all(h > low for low, h in zip(lo, hi)):
        out[tuple(slice(low - f, h - f) for low, h, f in zip(lo, hi, first))] = data[
            tuple(slice(low, h) for low, h in zip(lo, hi))]
    return out


def synister_cubes(volume, locations: np.ndarray, shape) -> np.ndarray:
    """`synister_get_raw` of an ntclass RawVolume (read whole: test volumes are small)."""
    return synister_get_raw(np.asarray(volume.data[...]), volume.offset, volume.voxel_size,
                            locations, shape)
