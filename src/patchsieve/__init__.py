"""patchsieve: CAREamics-compatible patch filtering and streaming patch sampling at volume scale.

Public API is re-exported here; implementation lives in private or concept modules.
``PatchDataset`` is served lazily so that ``import patchsieve`` does not import torch.
"""

from __future__ import annotations

from typing import Any

from patchsieve._version import __version__
from patchsieve.errors import (
    AxesError,
    ConfigError,
    DataError,
    PatchsieveError,
    SidecarError,
    SidecarMismatchError,
    VolumeError,
    VolumeNotFoundError,
)

__all__ = [
    "AxesError",
    "ConfigError",
    "DataError",
    "PatchsieveError",
    "SidecarError",
    "SidecarMismatchError",
    "VolumeError",
    "VolumeNotFoundError",
    "__version__",
]


def __getattr__(name: str) -> Any:  # lazy torch-dependent names
    raise AttributeError(f"module 'patchsieve' has no attribute {name!r}")
