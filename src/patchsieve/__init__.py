"""patchsieve: CAREamics-compatible patch filtering and streaming patch sampling at volume scale.

The public API is re-exported here; the implementation lives in one package or module per
concept (``grid``, ``volume``, ``filters``, ``regions``, ``sidecar``, ``filterpass``,
``sampling``, ``dataset``, ``analysis``, ``pipeline``, ``cli``; map in ``docs/architecture.md``).
Names are resolved lazily so that ``import patchsieve`` stays light and does not import torch,
distributed or matplotlib.

Examples
--------
>>> import patchsieve
>>> patchsieve.ShannonPatchFilterConfig(threshold=7.5).threshold
7.5
"""

from __future__ import annotations

import importlib
from typing import Any

# ``patchsieve.compute`` is the function; ``patchsieve/compute.py`` (an alias of the earlier module
# path) is imported first so that importing it later cannot rebind the name to the module.
import patchsieve.compute  # noqa: E402, F811 - the alias module, see above
from patchsieve import errors as _errors
from patchsieve._version import __version__
from patchsieve.errors import *  # noqa: F403 - the exception hierarchy, listed in errors.__all__
from patchsieve.filterpass import compute  # noqa: E402

#: public name -> module that defines it (imported on first access)
_LAZY = {
    # CAREamics filter API
    "MaxPatchFilter": "patchsieve.filters",
    "MeanStdPatchFilter": "patchsieve.filters",
    "ShannonPatchFilter": "patchsieve.filters",
    "MaskPatchFilter": "patchsieve.filters",
    "PatchFilter": "patchsieve.filters",
    "create_patch_filter": "patchsieve.filters",
    "MaxPatchFilterConfig": "patchsieve.config",
    "MeanStdPatchFilterConfig": "patchsieve.config",
    "ShannonPatchFilterConfig": "patchsieve.config",
    "MaskPatchFilterConfig": "patchsieve.config",
    "PatchFilterConfig": "patchsieve.config",
    # volumes and geometry
    "open_volume": "patchsieve.volume",
    "open_pyramid": "patchsieve.volume",
    "parse_axes": "patchsieve.volume",
    "RegionGrid": "patchsieve.grid",
    "normalize_patch_size": "patchsieve.grid",
    "region_stats": "patchsieve.regions",
    "filter_out_from_stats": "patchsieve.regions",
    "required_stats": "patchsieve.regions",
    "decide": "patchsieve.regions",  # deprecated: filter_out_from_stats
    "stat_names": "patchsieve.regions",  # deprecated: required_stats
    "filter_map_from_stats": "patchsieve.regions",
    "parse_filter_config": "patchsieve.config",
    "validate_training_patch_size": "patchsieve.grid",
    # side-car
    "open_sidecar": "patchsieve.sidecar",
    "Sidecar": "patchsieve.sidecar",
    # sampling / dataset
    "StratifiedPatching": "patchsieve.sampling",
    "StreamingPatching": "patchsieve.sampling",
    "PatchDataset": "patchsieve.dataset",
    "PatchLoader": "patchsieve.dataset",
    "RandomFlipRotate": "patchsieve.dataset.transforms",
    # demo data
    "write_demo_data": "patchsieve.demo",
    # pipelines
    "PipelineConfig": "patchsieve.pipeline",
    "run_pipeline": "patchsieve.pipeline",
}

__all__ = sorted(
    [
        *(name for name in _errors.__all__ if name != "PatchsieveDeprecationWarning"),
        "__version__",
        "compute",
        *_LAZY,
    ]
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'patchsieve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
