"""Keyed (counter-based) randomness for streamed epoch plans (private to
:mod:`patchsieve.sampling`).

A streamed plan never stores a random draw: every draw is a pure function of a 64-bit key
(derived from ``seed``, ``epoch`` and what is drawn) and a counter, so that any process can
recompute the draw it needs, in any order, and get the same value:

* :func:`key` folds integers into a key (splitmix64 chaining);
* :func:`uniforms` gives ``U[0, 1)`` doubles for counters (the splitmix64 stream of the key);
* :class:`KeyedPermutation` is a uniformly random bijection of ``range(n)`` with its inverse;
* :func:`generator` is a numpy ``Generator`` for vectorised binomial and multinomial draws
  over a whole epoch at once (drawn in a canonical order, so every process gets the same).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (mod 2**64)."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def key(*parts: int) -> int:
    """A 64-bit key from integers (order matters).

    Examples
    --------
    >>> key(1, 2) == key(1, 2), key(1, 2) == key(2, 1)
    (True, False)
    """
    h = 0x5EED5EED5EED5EED
    for p in parts:
        h = _mix_int(h + _GOLDEN + (int(p) & _M64))
    return h


def mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> _S30)) * _C1
    x = (x ^ (x >> _S27)) * _C2
    return x ^ (x >> _S31)


def hashes(k: int, counters: ArrayLike) -> NDArray[np.uint64]:
    """64-bit hashes of ``counters`` under key ``k`` (the splitmix64 stream of ``k``)."""
    c = np.asarray(counters).astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        return mix64(np.uint64(k & _M64) + c * np.uint64(_GOLDEN))


def uniforms(k: int, counters: ArrayLike) -> NDArray[np.float64]:
    """``U[0, 1)`` doubles, one per counter, a pure function of ``(k, counter)``.

    Examples
    --------
    >>> u = uniforms(key(7), np.arange(100_000))
    >>> bool((u >= 0).all() and (u < 1).all()), round(float(u.mean()), 2)
    (True, 0.5)
    """
    return (hashes(k, counters) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def generator(*parts: int) -> np.random.Generator:
    """A numpy Generator seeded from integers (``SeedSequence(parts)``)."""
    return np.random.default_rng(np.random.SeedSequence([int(p) & _M64 for p in parts]))


class KeyedPermutation:
    """A uniformly random bijection of ``range(n)`` determined by a key, with its inverse.

    The permutation sorts the keyed hashes of ``0 .. n-1`` (ties broken by index), so it is a
    pure function of ``(n, k)``; building it costs ``O(n log n)`` and ``16 n`` bytes, which is
    why streamed plans only permute small sets (the patches of a tile, the bins of a cell).

    Parameters
    ----------
    n : int
        Size of the domain.
    k : int
        Key (see :func:`key`).

    Examples
    --------
    >>> p = KeyedPermutation(10, key(3))
    >>> sorted(p(np.arange(10)).tolist()) == list(range(10))
    True
    >>> p.inverse(p(np.arange(10))).tolist() == list(range(10))
    True
    """

    def __init__(self, n: int, k: int):
        self.n = int(n)
        self.order = np.argsort(hashes(k, np.arange(self.n)), kind="stable").astype(np.int64)
        self._inv: NDArray[np.int64] | None = None

    def __call__(self, x: ArrayLike) -> NDArray[np.int64]:
        """Images of ``x`` (values in ``range(n)``)."""
        return self.order[np.asarray(x, dtype=np.int64)]

    def inverse(self, y: ArrayLike) -> NDArray[np.int64]:
        """Preimages of ``y`` (values in ``range(n)``)."""
        if self._inv is None:
            inv = np.empty(self.n, np.int64)
            inv[self.order] = np.arange(self.n, dtype=np.int64)
            self._inv = inv
        return self._inv[np.asarray(y, dtype=np.int64)]
