"""Counter-based random numbers: every draw is a pure function of its coordinates.

A draw is addressed by integer coordinates such as ``(seed, stream, episode, slot)``
and computed by hashing them with the SplitMix64 finaliser (Steele, Lea & Flood
2014, "Fast splittable pseudorandom number generators"). No generator state
exists, so episode ``i`` of seed ``s`` is identical whatever the batch size,
the process or the point a run was resumed from, and a whole meta-batch is
drawn with a handful of vectorised NumPy operations.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 2.0**-53

# Named streams keep unrelated draws of the same episode independent.
STREAM_CLASSES = 1
STREAM_EXAMPLES = 2
STREAM_FALLBACK = 3
STREAM_TASK = 4
STREAM_INPUTS = 5
STREAM_PAIRS = 6


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, a bijection on uint64 with full avalanche. Wraps modulo 2**64."""
    z = z ^ (z >> _S30)
    z = z * _M1
    z = z ^ (z >> _S27)
    z = z * _M2
    return z ^ (z >> _S31)


def hash_coords(*coords: int | np.ndarray) -> np.ndarray:
    """Hash broadcastable integer coordinates (non-negative) into uint64 draws.

    ``hash_coords(seed, stream, episodes[:, None], slots[None, :])`` gives one
    independent 64-bit draw per (episode, slot) pair.
    """
    with np.errstate(over="ignore"):
        h = np.zeros((), dtype=np.uint64)
        for c in coords:
            value = np.asarray(c)
            if value.dtype.kind == "i" and value.size and value.min() < 0:
                raise ValueError(f"random coordinates must be non-negative, got {value.min()}")
            h = mix(h + value.astype(np.uint64) * _GOLDEN + _GOLDEN)
        return np.asarray(h)


def uniform(*coords: int | np.ndarray) -> np.ndarray:
    """Float64 draws in ``[0, 1)`` (53 random bits), one per broadcast coordinate."""
    return (hash_coords(*coords) >> _S11).astype(np.float64) * _TO_UNIT


def integers(high: int | np.ndarray, *coords: int | np.ndarray) -> np.ndarray:
    """Int64 draws in ``[0, high)`` by scaling a 53-bit uniform; a value's probability is off
    from ``1/high`` by at most ``1/2**53`` (``high`` < 2**53)."""
    return np.floor(uniform(*coords) * high).astype(np.int64)
