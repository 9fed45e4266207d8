"""The CAREamics patch filters: Max, MeanStd, Shannon and Mask, with numpy kernels.

Names and static methods are CAREamics' (``careamics.dataset.patch_filter``), so
``from patchsieve import MaxPatchFilter`` replaces the CAREamics import:
``filter_out(patch)``, ``filter_map(image, patch_size)``, ``apply_filter(filter_map, ...)``,
``plot_filter_map(image, filter_map, z_idx=None)``; plus ``region_values`` (the region
statistic alone) and ``from_config``. :func:`create_patch_filter` also accepts
:class:`~patchsieve.config.MaskPatchFilterConfig` (CAREamics cannot, quirk B8).
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
from patchsieve.filters._base import PatchFilter, expand_region_values
from patchsieve.filters._mask import MaskPatchFilter
from patchsieve.filters._max import MaxPatchFilter
from patchsieve.filters._meanstd import MeanStdPatchFilter
from patchsieve.filters._shannon import ShannonPatchFilter, shannon_entropy

__all__ = [
    "AnyPatchFilter",
    "MaskPatchFilter",
    "MaxPatchFilter",
    "MeanStdPatchFilter",
    "PatchFilter",
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
