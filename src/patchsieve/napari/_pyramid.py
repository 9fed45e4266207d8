"""Label pyramids computed on demand from region decisions (no label image is read or written).

A side-car's decisions are per region; a pixel's label is 1 ("signal") when at least one region
covering it is kept (docs/sidecar-format.md, "Label images"). With regions of ``2*patch`` at
stride ``patch`` that is a function of the pixel's *cell* (``pixel // patch``):
:func:`patchsieve.sidecar.cover_cells` gives the cell-level mask, and every pyramid level is a
view of it. The coarsest level is the cell grid itself (one value per cell), so napari's
thumbnail and 3D rendering read nothing but that small array; finer levels are expanded only
for the tile napari asks for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["DecisionLabels", "LabelLevel", "level_factors"]


def level_factors(patch_size: Sequence[int]) -> list[tuple[int, ...]]:
    """Downsampling factor per spatial dim of each level: powers of two, then the patch size.

    Examples
    --------
    >>> level_factors((4, 8))
    [(1, 1), (2, 2), (4, 4), (4, 8)]
    >>> level_factors((48,))[-2:]
    [(32,), (48,)]
    """
    patch = tuple(int(p) for p in patch_size)
    out: list[tuple[int, ...]] = []
    k = 0
    while True:
        f = tuple(min(2**k, p) for p in patch)
        if out and f == out[-1]:
            break
        out.append(f)
        k += 1
    if out[-1] != patch:
        out.append(patch)
    return out


class DecisionLabels:
    """A multiscale label image whose pixels are computed from a cell-level keep mask.

    Parameters
    ----------
    keep_cells : numpy.ndarray of bool, (*lead, *cell_shape)
        True where at least one kept region covers the cell (:func:`~patchsieve.sidecar.cover_cells`
        of ``~filter_out``). ``lead`` are the sample dims (``s``, ``t``), not downsampled.
    spatial_shape, patch_size : sequence of int
        Pixel extent and patch size per spatial dim.

    Attributes
    ----------
    levels : list of LabelLevel
        Level 0 (full resolution) first, the cell grid last: the ``data`` of a multiscale
        napari ``Labels`` layer.

    Examples
    --------
    >>> keep = np.array([[True, False, False]])  # 1 x 3 cells
    >>> lab = DecisionLabels(keep, (4, 10), (4, 4))
    >>> [lvl.shape for lvl in lab.levels]
    [(4, 10), (2, 5), (1, 3)]
    >>> np.asarray(lab.levels[0])[0].tolist()
    [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    >>> lab.update(~keep)
    >>> np.asarray(lab.levels[-1]).tolist()
    [[0, 1, 1]]
    """

    def __init__(self, keep_cells: NDArray[np.bool_], spatial_shape: Sequence[int],
                 patch_size: Sequence[int]):
        self.spatial_shape = tuple(int(n) for n in spatial_shape)
        self.patch_size = tuple(int(p) for p in patch_size)
        n_sp = len(self.spatial_shape)
        if len(self.patch_size) != n_sp or keep_cells.ndim < n_sp:
            raise ValueError(f"keep_cells {keep_cells.shape} does not fit spatial shape "
                             f"{self.spatial_shape} and patch size {self.patch_size}")
        self.lead_shape = tuple(int(n) for n in keep_cells.shape[: keep_cells.ndim - n_sp])
        self.cell_shape = tuple(math.ceil(n / p) for n, p in zip(self.spatial_shape,
                                                                 self.patch_size))
        self.keep_cells = self._check(keep_cells)
        self.levels = [LabelLevel(self, f) for f in level_factors(self.patch_size)]

    def _check(self, keep_cells: NDArray[np.bool_]) -> NDArray[np.bool_]:
        want = (*self.lead_shape, *self.cell_shape)
        if tuple(keep_cells.shape) != want:
            raise ValueError(f"keep_cells has shape {keep_cells.shape}; expected {want}")
        return np.asarray(keep_cells, dtype=bool)

    def update(self, keep_cells: NDArray[np.bool_]) -> None:
        """Swap in a new cell mask: every level shows it from its next read on."""
        self.keep_cells = self._check(keep_cells)


class LabelLevel:
    """One level of a :class:`DecisionLabels` pyramid: a read-only uint8 array-like.

    ``level[key]`` supports what napari slices with (ints, slices with steps, ``...``, integer
    arrays per axis, orthogonal indexing); pixel ``i`` of a level with factor ``f`` takes the
    label of level-0 pixel ``i * f`` (the rule of the side-car's label pyramids).

    Examples
    --------
    >>> lab = DecisionLabels(np.array([[True, False]]), (2, 8), (2, 4))
    >>> lvl = lab.levels[0]
    >>> lvl.shape, lvl.dtype, lvl[1, ::2].tolist()
    ((2, 8), dtype('uint8'), [1, 1, 0, 0])
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, owner: DecisionLabels, factor: Sequence[int]):
        self._owner = owner
        self.factor = tuple(int(f) for f in factor)
        spatial = tuple(math.ceil(n / f) for n, f in zip(owner.spatial_shape, self.factor))
        self.shape: tuple[int, ...] = (*owner.lead_shape, *spatial)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<LabelLevel shape={self.shape} factor={self.factor}>"

    def __getitem__(self, key: Any) -> NDArray[np.uint8]:
        index = _expand_key(key, self.shape)
        n_lead = len(self._owner.lead_shape)
        parts: list[Any] = list(index[:n_lead])
        for ix, f, p in zip(index[n_lead:], self.factor, self._owner.patch_size):
            parts.append((np.asarray(ix) * f) // p)
        arrays = [i for i, part in enumerate(parts) if np.ndim(part) == 1]
        if arrays:
            grids = np.ix_(*[parts[i] for i in arrays])
            for i, g in zip(arrays, grids):
                parts[i] = g
        out = self._owner.keep_cells[tuple(parts)]
        return np.asarray(out, dtype=np.uint8)

    def __array__(self, dtype: Any = None, copy: Any = None) -> NDArray[Any]:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _expand_key(key: Any, shape: tuple[int, ...]) -> list[Any]:
    """Per-axis int or 1-D int array for an indexing key (orthogonal semantics)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        fill = len(shape) - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    if len(key) != len(shape):
        raise IndexError(f"too many indices for a label level of shape {shape}: {key!r}")
    out: list[Any] = []
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            out.append(np.arange(*k.indices(n)))
        elif isinstance(k, (int, np.integer)):
            i = int(k) + n if int(k) < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {k} is out of bounds for an axis of size {n}")
            out.append(i)
        else:
            a = np.asarray(k)
            if a.dtype == bool:
                a = np.flatnonzero(a)
            a = np.where(a < 0, a + n, a).astype(np.int64).ravel()
            if a.size and (a.min() < 0 or a.max() >= n):
                raise IndexError(f"index out of bounds for an axis of size {n}")
            out.append(a)
    return out
