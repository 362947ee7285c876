"""The fixed permutation set of the jigsaw task (Noroozi & Favaro 2016, arXiv:1603.09246,
section 3.2 and Algorithm 1): permutations of the 9 tiles far apart in Hamming distance, so
that no two classes are nearly the same puzzle.

Algorithm 1 of the paper (``average``, the default) starts from a random permutation and
repeatedly adds the permutation with the largest summed, i.e. average, Hamming distance to those
already chosen: the mean pairwise distance is 8.08 for 100 permutations and 8.00 for 1000, the
figures of the paper's table 1, but two of them may differ by a single swap (distance 2).
``maximin`` first maximises the minimum distance to the chosen set and breaks ties by the
paper's criterion: the same mean, and a minimum of 6 for 100 and 5 for 1000.
"""

import functools
import itertools
from typing import Literal

import numpy as np

TILES = 9


@functools.lru_cache(maxsize=1)
def _all_permutations() -> np.ndarray:
    """(9, 9!) int8, one column per permutation in lexicographic order (columns are fast to
    compare position by position)."""
    return np.array(list(itertools.permutations(range(TILES))), dtype=np.int8).T.copy()


@functools.lru_cache(maxsize=8)
def permutation_set(
    size: int, seed: int = 0, selection: Literal["average", "maximin"] = "average"
) -> np.ndarray:
    """``size`` permutations of range(9) as a read-only (size, 9) int64 array, row p being the
    class-p permutation. Deterministic given its arguments; cached per process (the 1000-set
    takes seconds to choose)."""
    if not 1 <= size <= 362880:
        raise ValueError(f"permutation_set: size must be in [1, 9!], got {size}")
    if selection not in ("maximin", "average"):
        raise ValueError(f"permutation_set: unknown selection {selection!r}")
    perms = _all_permutations()  # (9, P)
    total = perms.shape[1]
    nearest = np.full(total, TILES + 1, dtype=np.int64)  # min distance to the chosen set
    summed = np.zeros(total, dtype=np.int64)  # summed distance to the chosen set
    chosen: list[int] = []
    j = int(np.random.default_rng(seed).integers(total))
    for _ in range(size):
        chosen.append(j)
        same = np.zeros(total, dtype=np.int8)
        for position in range(TILES):
            same += perms[position] == perms[position, j]
        distance = TILES - same.astype(np.int64)  # Hamming distance of each to the new one
        np.minimum(nearest, distance, out=nearest)
        summed += distance
        # a distance-0 permutation is one already chosen: never pick it again
        key = summed if selection == "average" else nearest * (TILES * size + 1) + summed
        key = np.where(nearest > 0, key, -1)
        j = int(np.argmax(key))  # ties: the first in lexicographic order
    out = perms[:, chosen].T.astype(np.int64)  # (size, 9)
    out.setflags(write=False)
    return out


def hamming_distances(perms: np.ndarray) -> np.ndarray:
    """(P, 9) permutations -> (P, P) pairwise Hamming distances (number of differing slots)."""
    return (perms[:, None, :] != perms[None, :, :]).sum(axis=2)
