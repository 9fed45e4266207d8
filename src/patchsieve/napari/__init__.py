"""napari plugin: open a side-car over its data and tune its thresholds live.

``pip install "patchsieve[napari]"`` registers the plugin ``patchsieve`` (npe2 manifest
``napari.yaml``): a reader for ``*.patchsieve.zarr`` (``viewer.open(path, plugin="patchsieve")``,
or drop the folder on the window) and three dock widgets (Plugins menu): *Threshold*, *Preview*
and *Open side-car* (object-storage credentials, a moved source). See ``docs/napari.md``.

Modules (the Qt-free ones are what the tests and benchmarks drive without a display):

* ``_pyramid`` -- :class:`DecisionLabels`, :class:`LabelLevel`: label pyramids computed on
  demand from the decisions, the coarsest level being the cell grid.
* ``_scene`` -- :class:`SidecarScene`, :func:`read_sidecar`: the side-car, its source (checked
  against the stored fingerprint) and the layer data.
* ``_live`` -- :class:`LiveThreshold`: decisions, counts and labels for a moving threshold;
  suggest and apply through :mod:`patchsieve.analysis`.
* ``_reader`` -- :func:`napari_get_reader` (errors go to the viewer's notifications).
* ``_widgets`` / ``_histogram`` -- the Qt widgets (imported on first access).
"""

from __future__ import annotations

import importlib
from typing import Any

from patchsieve.napari._live import LiveThreshold, ThresholdState, live_sidecar
from patchsieve.napari._pyramid import DecisionLabels, LabelLevel, level_factors
from patchsieve.napari._scene import SidecarScene, read_sidecar

#: Qt widgets and the napari-facing reader, imported on first access (they import napari/Qt)
_LAZY = {
    "napari_get_reader": "patchsieve.napari._reader",
    "ThresholdWidget": "patchsieve.napari._widgets",
    "PreviewWidget": "patchsieve.napari._widgets",
    "OpenSidecarWidget": "patchsieve.napari._widgets",
}

__all__ = [
    "DecisionLabels",
    "LabelLevel",
    "LiveThreshold",
    "OpenSidecarWidget",
    "PreviewWidget",
    "SidecarScene",
    "ThresholdState",
    "ThresholdWidget",
    "level_factors",
    "live_sidecar",
    "napari_get_reader",
    "read_sidecar",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'patchsieve.napari' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
