"""The npe2 reader of ``*.patchsieve.zarr``: ``viewer.open(path, plugin="patchsieve")``.

A side-car that cannot be shown (not a side-car, incomplete, its source missing or changed) gives
one error notification in the viewer, with the fix, and no layer (napari's "nothing to add"
sentinel ``[(None,)]``, so napari neither falls back to another reader nor asks which one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from patchsieve.errors import PatchsieveError
from patchsieve.napari._scene import read_sidecar
from patchsieve.sidecar import SUFFIX

logger = logging.getLogger(__name__)

__all__ = ["napari_get_reader", "napari_layer_data", "prefer_patchsieve_reader", "read_or_notify"]

#: napari reader-preference patterns of a side-car (a folder: napari matches "<path>/")
READER_PATTERNS = ("*" + SUFFIX, "*" + SUFFIX + os.sep)


def napari_get_reader(path: str | Sequence[str]) -> Callable[[Any], list[Any]] | None:
    """npe2 ``get_reader``: the reader for one side-car path, else None.

    Examples
    --------
    >>> napari_get_reader("cells.patchsieve.zarr") is read_or_notify
    True
    >>> napari_get_reader(["a.patchsieve.zarr", "b.patchsieve.zarr"]) is None
    True
    """
    if not isinstance(path, (str, os.PathLike)):
        if len(path) != 1:
            return None  # a stack of side-cars has no meaning
        path = path[0]
    text = os.fspath(path).rstrip("/\\")
    return read_or_notify if text.endswith(SUFFIX) else None


def read_or_notify(path: str | Sequence[str]) -> list[Any]:
    """Layer data of a side-car; on a patchsieve error, one notification and no layer."""
    if not isinstance(path, (str, os.PathLike)):
        path = path[0]
    try:
        layers = napari_layer_data(read_sidecar(os.fspath(path)))
    except PatchsieveError as err:
        from napari.utils.notifications import show_error

        logger.warning("cannot open side-car %s: %s", path, err)
        show_error(f"patchsieve: {err}")
        return [(None,)]
    prefer_patchsieve_reader()
    return layers


def prefer_patchsieve_reader() -> None:
    """Make patchsieve napari's reader of ``*.patchsieve.zarr`` (files and dropped folders).

    napari offers every reader that accepts folders for any dropped folder and asks which one to
    use until a preference is stored (Preferences > Plugins > File extension readers). Once the
    plugin has been used (a patchsieve widget opened, or a side-car read with it), this stores
    that preference for the side-car suffix only; a preference the user set for it is kept.
    """
    from napari.settings import get_settings

    plugins = get_settings().plugins
    prefs = dict(plugins.extension2reader)
    missing = {p: "patchsieve" for p in READER_PATTERNS if p not in prefs}
    if missing:
        plugins.extension2reader = {**prefs, **missing}
        logger.info("napari now opens %s with patchsieve", ", ".join(missing))


def napari_layer_data(layers: list[Any]) -> list[Any]:
    """Layer data with napari objects where napari needs them: the Labels colormap (1 = kept,
    0 transparent) as a two-colour ``CyclicLabelColormap`` (a direct colormap would cost a numba
    compilation, ~2 s, at the first Labels layer of a session)."""
    from napari.utils.colormaps import CyclicLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    out = []
    for data, kwargs, kind in layers:
        cmap = kwargs.get("colormap")
        if kind == "labels" and isinstance(cmap, dict):
            colours = [transform_color(cmap.get(0, "transparent"))[0],
                       transform_color(cmap[1])[0]]
            kwargs = {**kwargs, "colormap": CyclicLabelColormap(colors=colours)}
        out.append((data, kwargs, kind))
    return out
