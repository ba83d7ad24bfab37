"""Synister's VGG as Synister builds it, written here from the published definition of
`funlib.learn.torch.models.Vgg3D` (the reference the `vgg3d` architecture must match), and
gunpowder-format checkpoints of it."""

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


def synister_model(input_shape, fmaps: int = 4, seed: int = 0) -> SynisterVgg3D:
    """A reference model with random weights and non-trivial BatchNorm statistics."""
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


def synister_cubes(volume, locations: np.ndarray, shape) -> np.ndarray:
    """Cubes as Synister's predict_pipeline crops them (synister.utils.get_raw): each
    location truncated to whole nm, minus shape / 2 voxels, a ROI of the cube's size
    snapped to the closest voxel corner by funlib.geometry, read from the volume (an
    ntclass RawVolume here, in place of daisy's dataset)."""
    from funlib.geometry import Coordinate, Roi

    size, voxel_size = Coordinate(shape), Coordinate(volume.voxel_size)
    cubes = []
    for loc in locations:
        loc = Coordinate(tuple(int(v) for v in loc))
        offset_nm = loc - (size / 2 * voxel_size)
        roi = Roi(offset_nm, size * voxel_size).snap_to_grid(voxel_size, mode="closest")
        begin = (roi.begin - Coordinate(volume.offset)) / voxel_size
        cube, _ = volume.read(np.array(begin), tuple(size))
        cubes.append(cube)
    return np.stack(cubes)
