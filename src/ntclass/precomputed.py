"""Neuroglancer precomputed's chunk ids, shared by the JPEG chunk reader and the raw stamps."""

from __future__ import annotations

from collections.abc import Sequence


def compressed_morton_code(position_xyz: Sequence[int], grid_xyz: Sequence[int]) -> int:
    """A precomputed chunk's id: its grid position's bits interleaved x, y, z, each axis
    using only the bits its grid size needs (neuroglancer's sharded format)."""
    bits = [max(0, int(g) - 1).bit_length() for g in grid_xyz]
    code, out_bit = 0, 0
    for bit in range(max(bits, default=0)):
        for axis in range(3):
            if bit < bits[axis]:
                code |= ((int(position_xyz[axis]) >> bit) & 1) << out_bit
                out_bit += 1
    return code
