"""The one mapping of raw intensities to the network's input.

Raw values `low`..`high` map linearly onto [0, 1], clipped; the network sees that unit
range stretched to [-1, 1]. Training's data path, its device augmentations, validation and
prediction all use the arithmetic here, so a model sees the same floats everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ntclass.errors import NtclassError

if TYPE_CHECKING:
    import torch

# Integer dtypes whose full range is a sensible default intensity range; wider integers
# and floats need `intensity_range` in the config (their range says nothing about the data).
_RANGE_BY_DTYPE = ("uint8", "int8", "uint16", "int16")


def unit_tensor(cubes: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Raw values (any dtype, any device) as float32 in [0, 1], on a copy. A division, not a
    multiplication by the reciprocal: uint16 raw that is uint8 raw times 257 then maps to
    exactly the same floats."""
    import torch

    span = float(np.float32(high - low))
    # in place on the copy: the same operations in the same order, a third of the time
    return cubes.to(torch.float32, copy=True).sub_(low).div_(span).clamp_(0, 1)


@dataclass(frozen=True)
class Intensity:
    """Raw values `low`..`high` of dtype `dtype` map linearly onto [0, 1]; values outside
    are clipped."""

    dtype: str
    low: float
    high: float

    def to_unit(self, data: np.ndarray) -> np.ndarray:
        """float32 in [0, 1] (numpy): `unit_tensor`'s arithmetic."""
        import torch

        data = np.asarray(data)
        if not data.dtype.isnative:  # N5 stores big-endian; torch reads native order only
            data = data.astype(data.dtype.newbyteorder("="))
        return unit_tensor(torch.from_numpy(np.ascontiguousarray(data)), self.low,
                           self.high).numpy()

    def record(self) -> list[float]:
        return [self.low, self.high]


def to_network(cubes: torch.Tensor, intensity: Intensity) -> torch.Tensor:
    """Raw cubes (N, z, y, x) of any dtype, on any device, to the model's input
    (N, 1, z, y, x) in [-1, 1]."""
    return unit_tensor(cubes, intensity.low, intensity.high).mul_(2).sub_(1)[:, None]


def intensity_of(dtype, intensity_range: Sequence[float] | None, name: str) -> Intensity:
    """The intensity mapping of raw of `dtype`: the configured range, or for 8- and 16-bit
    integers their full range. Anything else stops with one sentence."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise NtclassError(f"raw dataset '{name}' has dtype {dtype}; expected unsigned or "
                           "signed integers or floats")
    if intensity_range is not None:
        low, high = (float(v) for v in intensity_range)
        if not high > low:
            raise NtclassError(f"intensity_range {list(intensity_range)} for raw '{name}' "
                               "must go from a low to a higher value")
        return Intensity(dtype.name, low, high)
    if dtype.name in _RANGE_BY_DTYPE:
        info = np.iinfo(dtype)
        return Intensity(dtype.name, float(info.min), float(info.max))
    kind = "floating-point" if dtype.kind == "f" else "wide integer"
    raise NtclassError(f"raw dataset '{name}' has {kind} dtype {dtype}, whose range says "
                       "nothing about its intensities; set intensity_range: [low, high] "
                       "(for example [0, 1] or [0, 255]) in its source or target")
