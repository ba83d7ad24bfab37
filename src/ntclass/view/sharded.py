"""neuroglancer_uint64_sharded_v1 shard files, written whole by one job.

The format is google/neuroglancer's `src/datasource/precomputed/sharded.md`: a key's
minishard and shard are bits of its hash (here the identity of the key, shifted right by
`preshift_bits`: `local_preshift` shifts as far as the shards stay even, so that keys near
in value, such as neighbouring cells of a spatial level, share a shard); a
shard file is the shard index (for each minishard, the [start, end) byte range of its
minishard index), then the chunks, then the minishard indices (ids, chunk offsets and sizes,
each delta-encoded, as 3 x n little-endian uint64), every offset counted from the end of
the shard index. Each shard can thus be written on its own, from its keys alone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

from ntclass.settings import View

MINISHARD_KEYS: int = View.default("keys_per_minishard")  # as neuroglancer's writer
SHARD_BYTES = int(View.default("shard_mb") * 1e6)


def sharding_spec(keys: int, total_bytes: int, data_encoding: str = "gzip",
                  minishard_keys: int = MINISHARD_KEYS, shard_bytes: int = SHARD_BYTES) -> dict:
    """The sharding of an index of `keys` keys and about `total_bytes` bytes, chosen as
    neuroglancer's own writer (`write_annotations.choose_output_spec`) chooses it."""
    total_bits = 0
    while (keys >> total_bits) > minishard_keys:
        total_bits += 1
    shard_bits = 0
    while (total_bytes >> shard_bits) > shard_bytes:
        shard_bits += 1
    shard_bits = min(shard_bits, total_bits)  # no shard without a minishard's worth of keys
    return {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity",
            "preshift_bits": 0, "minishard_bits": total_bits - shard_bits,
            "shard_bits": shard_bits, "minishard_index_encoding": "gzip",
            "data_encoding": data_encoding}


# the largest shard at most this many times an even share: a reduce job holds its whole
# shard (at 10^7 synapses, 2.0 let the largest job's peak rise from 658 MB to 1,006 MB)
BALANCE = 1.25
CHECKED = 1 << 18  # sample keys a preshift is checked on (~500 a shard at 512 shards)


def local_preshift(sample: np.ndarray, key_bits: int, spec: dict,
                   balance: float = BALANCE) -> int:
    """The largest preshift that leaves the shards even on `sample` (keys drawn in
    proportion to their bytes): no shard over `balance` times an even share. At the
    largest, a key's shard is its top bits, so that a change among keys near in value
    (a place, for Morton codes of cells) rewrites few shards; 0 (the low bits, keys
    dealt round the shards) where nothing larger is even. `key_bits`: the bit length
    of the largest key."""
    count = shards(spec)
    if count == 1 or len(sample) == 0:
        return 0
    sample = np.asarray(sample, np.uint64)[::max(1, len(sample) // CHECKED)]
    top = max(0, key_bits - spec["minishard_bits"] - spec["shard_bits"])
    for preshift in range(top, 0, -1):
        shard = shard_of(sample, {**spec, "preshift_bits": preshift})
        if np.bincount(shard, minlength=count).max() <= balance * len(sample) / count:
            return preshift
    return 0


def shards(spec: dict) -> int:
    return 1 << spec["shard_bits"]


def shard_of(keys: np.ndarray, spec: dict) -> np.ndarray:
    """The shard of each uint64 key (identity hash)."""
    hashed = keys.astype(np.uint64) >> np.uint64(spec["preshift_bits"])
    return ((hashed >> np.uint64(spec["minishard_bits"]))
            & np.uint64((1 << spec["shard_bits"]) - 1)).astype(np.uint32)


def minishard_of(keys: np.ndarray, spec: dict) -> np.ndarray:
    hashed = keys.astype(np.uint64) >> np.uint64(spec["preshift_bits"])
    return hashed & np.uint64((1 << spec["minishard_bits"]) - 1)


def shard_name(shard: int, spec: dict) -> str:
    """The shard's file name: its number in hex, zero-padded to ceil(shard_bits / 4)."""
    return format(shard, "x").zfill(math.ceil(spec["shard_bits"] / 4)) + ".shard"


def gzipped(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    return packer.compress(data) + packer.flush()


def shard_file(keys: np.ndarray, chunks: Sequence[bytes], spec: dict) -> bytes:
    """One shard file holding `chunks` under their distinct uint64 `keys`, all of which
    must belong to one shard of `spec`."""
    keys = np.asarray(keys, np.uint64)
    if len(np.unique(keys)) != len(keys):
        raise ValueError("a shard's keys must be distinct")
    minishards = minishard_of(keys, spec)
    order = np.lexsort((keys, minishards))
    encode = gzipped if spec["data_encoding"] == "gzip" else bytes
    data = [encode(chunks[i]) for i in order.tolist()]
    sizes = np.array([len(d) for d in data], np.uint64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    body = b"".join(data)
    count = 1 << spec["minishard_bits"]
    index = np.zeros((count, 2), "<u8")
    tails, position = [], len(body)
    sorted_keys, sorted_minishards = keys[order], minishards[order]
    bounds = np.searchsorted(sorted_minishards, np.arange(count + 1, dtype=np.uint64))
    for m in range(count):
        a, b = int(bounds[m]), int(bounds[m + 1])
        if a == b:
            index[m] = position
            continue
        ids, offsets, lengths = sorted_keys[a:b], starts[a:b], sizes[a:b]
        table = np.stack([np.diff(ids, prepend=np.uint64(0)),
                          # each chunk's offset after the end of the one before
                          np.diff(offsets, prepend=np.uint64(0))
                          - np.concatenate([[0], lengths[:-1]]).astype(np.uint64),
                          lengths]).astype("<u8").tobytes()
        if spec["minishard_index_encoding"] == "gzip":
            table = gzipped(table)
        index[m] = position, position + len(table)
        tails.append(table)
        position += len(table)
    return index.tobytes() + body + b"".join(tails)
