"""The kernels of the filters: region statistics of a slab and per-cell partial sums.

The public kernel API of :mod:`patchsieve.filters`, used by the region graphs of
:mod:`patchsieve.regions` and by the filter pass. Region kernels take a *slab* ``(L, *spatial)``
(validated float32 data whose first pixel is the origin of its first region) and return float64
``(L, *n)``; cell kernels reduce a cell-aligned block to per-cell sums that
:func:`regions_from_cells` combines into exactly the region kernels' values. Hot loops run in
numba when it is installed (:func:`jit_available`), numpy otherwise, with identical results.
"""

from __future__ import annotations

from patchsieve.filters._cells import (
    CELL_STATS,
    cell_int_sums,
    cell_moments,
    cell_stats_supported,
    jit_available,
    moments_from_sums,
    regions_from_cells,
)
from patchsieve.filters._kernels import (
    combine_cells,
    combine_moments,
    coverage_rank,
    is_integer_valued,
    region_count_nonzero,
    region_entropy,
    region_max,
    region_max_coverage,
    region_mean_std,
    valid_counts,
)
from patchsieve.filters._max_train import region_max_coverage_constant

__all__ = [
    "CELL_STATS",
    "cell_int_sums",
    "cell_moments",
    "cell_stats_supported",
    "combine_cells",
    "combine_moments",
    "coverage_rank",
    "is_integer_valued",
    "jit_available",
    "moments_from_sums",
    "region_count_nonzero",
    "region_entropy",
    "region_max",
    "region_max_coverage",
    "region_max_coverage_constant",
    "region_mean_std",
    "regions_from_cells",
    "valid_counts",
]
