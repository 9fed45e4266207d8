"""Deprecated path of :mod:`patchsieve.analysis` (it shadowed the standard library's ``inspect``).

Every name of the earlier module is served from :mod:`patchsieve.analysis` with a
:class:`~patchsieve.errors.PatchsieveDeprecationWarning`; ``RegionGridGeometry`` is now
:class:`patchsieve.grid.VolumeGeometry`. This alias is removed after one release.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from patchsieve.analysis import __all__ as _ANALYSIS_NAMES
from patchsieve.errors import PatchsieveDeprecationWarning

__all__ = ["RegionGridGeometry", *_ANALYSIS_NAMES]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'patchsieve.inspect' has no attribute {name!r}")
    warnings.warn(f"patchsieve.inspect is renamed patchsieve.analysis; import {name} from there "
                  "(the old path is removed after one release).", PatchsieveDeprecationWarning,
                  stacklevel=2)
    if name == "RegionGridGeometry":
        return importlib.import_module("patchsieve.grid").VolumeGeometry
    return getattr(importlib.import_module("patchsieve.analysis"), name)


def __dir__() -> list[str]:
    return list(__all__)
