"""CAREamics' training-path Max statistic (quirk B10): the region value of
``MaxPatchFilter.filter_out``'s constant-mode maximum filter, beside the reflect-mode value of
``filter_map`` (:func:`patchsieve.filters._kernels.region_max_coverage`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from patchsieve.filters._kernels import (
    _cell_view,
    _clipped_max_profiles,
    combine_cells,
    coverage_rank,
    padded_cells,
    region_max_coverage,
)
from patchsieve.grid import Border


def region_max_coverage_constant(
    slab: NDArray[np.floating],
    patch_size: Sequence[int],
    n: Sequence[int],
    coverage: float,
    border: Border = "careamics",
    reflect: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """CAREamics' *training-path* Max value of every region (quirk B10).

    ``MaxPatchFilter.filter_out`` (what ``filter_background`` runs) max-filters each region
    with ``mode="constant"`` (zeros outside the region), ``filter_map`` with the default reflect
    mode (:func:`region_max_coverage`). The constant-mode filter is the reflect-mode one raised
    to at least 0 on the pixels whose window leaves the region (within ``patch // 2`` of a
    region face), so the two agree wherever the region (zero padding included) holds no
    negative value: those regions take ``reflect`` as it is; the others are recomputed. Returns
    the ``k``-th largest constant-mode filtered value (``k`` = :func:`coverage_rank`); a region
    is kept by CAREamics iff this value exceeds the threshold and its plain maximum does not
    fall short of it. With ``border="valid"`` (no CAREamics equivalent) it is ``reflect``.
    """
    if reflect is None:
        reflect = region_max_coverage(slab, patch_size, n, coverage, border)
    out = np.array(reflect, dtype=np.float64, copy=True)
    if border != "careamics" or slab.size == 0 or (slab.dtype.kind in "ub") \
            or float(np.min(slab)) >= 0.0:
        return out
    nd = len(patch_size)
    x = padded_cells(np.asarray(slab, dtype=np.float32), patch_size, n, 0.0)
    red_axes = tuple(range(2, 2 * nd + 1, 2))
    negative = combine_cells(_cell_view(x, patch_size).min(axis=red_axes), np.minimum) < 0
    if not negative.any():
        return out
    f = x
    for ax, p in enumerate(patch_size):
        f = _clipped_max_profiles(f, 1 + 2 * ax, p)
    # f: (L, n0, 2p0, n1, 2p1, ...): zero the floor of the band whose windows leave the region
    for ax, p in enumerate(patch_size):
        h = p // 2
        band = np.zeros(2 * p, bool)
        band[:h] = True
        band[p + h + 1:] = True
        idx = [slice(None)] * f.ndim
        idx[2 + 2 * ax] = band
        f[tuple(idx)] = np.maximum(f[tuple(idx)], 0.0)
    L = f.shape[0]
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
    f = f.transpose(perm).reshape(L, *n, -1)
    size = f.shape[-1]
    k = coverage_rank(coverage, size)
    const = np.partition(f, size - k, axis=-1)[..., size - k].astype(np.float64)
    out[negative] = const[negative]
    return out
