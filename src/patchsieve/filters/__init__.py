"""The CAREamics patch filters: Max, MeanStd, Shannon and Mask, with numpy kernels.

Names and static methods are CAREamics' (``careamics.dataset.patch_filter``), so
``from patchsieve import MaxPatchFilter`` replaces the CAREamics import:
``filter_out(patch)``, ``filter_map(image, patch_size)``, ``apply_filter(filter_map, ...)``,
``plot_filter_map(image, filter_map, z_idx=None)``; plus ``region_values`` (the region
statistic alone) and ``from_config``. :func:`create_patch_filter` also accepts
:class:`~patchsieve.config.MaskPatchFilterConfig` (CAREamics cannot, quirk B8).

Numerics follow CAREamics 0.3.5 exactly by default (see ``shared/careamics_reference``):
data cast to float32; regions of ``2 * patch_size`` on a stride-``patch_size`` grid,
zero-padded past the image (B7); ``filter_out`` keeps at equality and ``apply_filter``
drops at equality (B3); the per-pixel map is the max over the covering regions with
CAREamics' zero-initialised layers. Options, documented per method:

* ``border="valid"``: statistics over in-image pixels only (no zero padding);
* ``ties="keep"`` / ``"drop"``: one tie rule for ``filter_out`` and ``apply_filter``;
* a :class:`~patchsieve.errors.PatchsieveWarning` for Shannon on float data whose values
  are (nearly) all unique (B5).

Policy for bad data: NaN or inf raises :class:`~patchsieve.errors.DataError` naming the
first offending pixel (CAREamics would silently produce NaN statistics); so do empty
arrays, complex/object/string dtypes, boolean data outside the Mask filter, and mask
values other than 0/1. Hot kernels use numba when it is installed (``_jit``), numpy
otherwise, with identical results.

Public modules: :mod:`patchsieve.filters.stats` (statistics by name, checks, the filter-map
expansion) and :mod:`patchsieve.filters.kernels` (the region and cell kernels). Private:
``_base`` (protocol and base class), one module per filter, ``_kernels``, ``_cells``, ``_jit``.
"""

from __future__ import annotations

from typing import Union

from patchsieve.config import (
    MaskPatchFilterConfig,
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
    parse_filter_config,
)
from patchsieve.errors import ConfigError
from patchsieve.filters._base import PatchFilter, RegionFilter
from patchsieve.filters._mask import MaskPatchFilter
from patchsieve.filters._max import MaxPatchFilter
from patchsieve.filters._meanstd import MeanStdPatchFilter
from patchsieve.filters._shannon import ShannonPatchFilter, shannon_entropy
from patchsieve.filters.stats import expand_region_values

__all__ = [
    "AnyPatchFilter",
    "MaskPatchFilter",
    "MaxPatchFilter",
    "MeanStdPatchFilter",
    "PatchFilter",
    "RegionFilter",
    "ShannonPatchFilter",
    "create_patch_filter",
    "expand_region_values",
    "shannon_entropy",
]

AnyPatchFilter = Union[MaskPatchFilter, MaxPatchFilter, MeanStdPatchFilter, ShannonPatchFilter]

for _cls in (MaskPatchFilter, MaxPatchFilter, MeanStdPatchFilter, ShannonPatchFilter):
    _cls.__module__ = __name__


def create_patch_filter(
    config: MaxPatchFilterConfig
    | MeanStdPatchFilterConfig
    | ShannonPatchFilterConfig
    | MaskPatchFilterConfig
    | dict,
) -> AnyPatchFilter:
    """Create the filter described by a config (CAREamics' factory, plus the Mask filter).

    Parameters
    ----------
    config : PatchFilterConfig or mapping
        A filter config model, or a mapping validated into one.

    Returns
    -------
    MaxPatchFilter, MeanStdPatchFilter, ShannonPatchFilter or MaskPatchFilter

    Raises
    ------
    ConfigError
        The config is not a known filter config.

    Examples
    --------
    >>> create_patch_filter(MaskPatchFilterConfig(coverage=0.5))
    MaskPatchFilter(coverage=0.5)
    """
    cfg = parse_filter_config(config)
    if isinstance(cfg, MaxPatchFilterConfig):
        return MaxPatchFilter.from_config(cfg)
    elif isinstance(cfg, MeanStdPatchFilterConfig):
        return MeanStdPatchFilter.from_config(cfg)
    elif isinstance(cfg, ShannonPatchFilterConfig):
        return ShannonPatchFilter.from_config(cfg)
    elif isinstance(cfg, MaskPatchFilterConfig):
        return MaskPatchFilter.from_config(cfg)
    else:  # pragma: no cover - parse_filter_config only returns the four
        raise ConfigError(f"unknown patch filter config {config!r}")
