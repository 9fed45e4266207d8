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

#: every name is imported on first access: the reader needs only ``_scene`` (napari loads it for
#: the first side-car of a session), the widgets import napari/Qt
_LAZY = {
    "DecisionLabels": "patchsieve.napari._pyramid",
    "LabelLevel": "patchsieve.napari._pyramid",
    "level_factors": "patchsieve.napari._pyramid",
    "SidecarScene": "patchsieve.napari._scene",
    "read_sidecar": "patchsieve.napari._scene",
    "LiveThreshold": "patchsieve.napari._live",
    "ThresholdState": "patchsieve.napari._live",
    "live_sidecar": "patchsieve.napari._live",
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
