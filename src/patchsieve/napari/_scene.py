"""A side-car and its source as napari layer data (Qt-free; napari itself is not imported).

:class:`SidecarScene` opens a side-car, re-opens and checks its source and builds the layer data
the reader returns: the source as a lazy (multiscale) Image layer and one multiscale Labels layer
per filter whose pixels come from the decisions (:class:`~patchsieve.napari.DecisionLabels`).
Only metadata is read to open it, plus the few raw chunks of the source fingerprint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from patchsieve.errors import AxesError, SidecarMismatchError, VolumeError, VolumeNotFoundError
from patchsieve.napari._pyramid import DecisionLabels
from patchsieve.sidecar import Sidecar, cover_cells, open_sidecar, source_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["KEPT_COLOUR", "LayerData", "SidecarScene", "read_sidecar"]

#: napari layer data: (data, layer kwargs, layer type)
LayerData = tuple[Any, dict[str, Any], str]
#: colour of kept ("signal") pixels in the Labels layers (colour-blind safe blue)
KEPT_COLOUR = "#0072B2"


class SidecarScene:
    """A side-car opened for viewing: its source pyramid, and a label pyramid per filter.

    Parameters
    ----------
    path : str or path-like
        The side-car (``*.patchsieve.zarr``), local or an fsspec URL.
    storage_options : mapping, optional
        fsspec options (credentials, ``endpoint_url``) for the side-car and its source; default:
        the environment and fsspec's configuration. Kept in memory only, never stored.
    source : str, optional
        Where the source is now, when it was moved (it must be the same data: the side-car's
        fingerprint is checked). Default: the side-car's recorded source URL; a relative local
        path is also looked up beside the side-car.

    Raises
    ------
    SidecarError
        ``path`` is not a side-car (or it is damaged); :class:`SidecarIncompleteError` when its
        run did not finish.
    VolumeNotFoundError
        The source is missing.
    SidecarMismatchError
        The source changed since the side-car was computed (fingerprint mismatch).

    Examples
    --------
    >>> import tempfile, os, patchsieve as ps
    >>> from patchsieve.demo import write_ome_zarr
    >>> d = tempfile.mkdtemp()
    >>> img = np.random.default_rng(0).poisson(5.0, (64, 64)).astype("uint16")
    >>> src = write_ome_zarr(os.path.join(d, "img.ome.zarr"), img, "yx", chunks=(32, 32))
    >>> sc = ps.compute(src, ps.MeanStdPatchFilterConfig(mean_threshold=5.0), (16, 16),
    ...                 cluster={"processes": False, "n_workers": 1})
    >>> scene = SidecarScene(sc.path)
    >>> [(kind, kw["name"]) for _, kw, kind in scene.layer_data()]
    [('image', 'img'), ('labels', 'mean_std: kept')]
    >>> [lvl.shape for lvl in scene.labels["mean_std"].levels]
    [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 storage_options: Mapping[str, Any] | None = None, source: str | None = None):
        self.path = os.fspath(path)
        self.storage_options = dict(storage_options or {})
        self.sidecar: Sidecar = open_sidecar(self.path, storage_options=storage_options)
        self.source = self._locate(source)
        self.levels = self._open_source()
        self.check_source()
        self._level0 = self._level0_geometry()
        self.labels = {name: DecisionLabels(self.keep_cells(self.sidecar.filter_out(name), name),
                                            self.label_shape, self.label_patch)
                       for name in self.sidecar.filter_names}

    # ------------------------------------------------------------------ the source
    def _locate(self, source: str | None) -> str:
        """The source's location now: given, recorded, or (relative) beside the side-car."""
        sc = self.sidecar
        url = sc.source if source is None else os.fspath(source)
        if url.startswith("<"):
            raise VolumeNotFoundError(
                f"side-car {self.path!r} was computed from an in-memory array ({url}); there is "
                "no source to show. Fix: write the data to OME-Zarr/Zarr/TIFF, compute the "
                "side-car from that file, or give the source's location (source= / the "
                "widget's source field).")
        return url if source is not None else sc.locate_source()

    def _open_source(self) -> list[Any]:
        from patchsieve.volume import open_pyramid

        so = self.storage_options or None
        try:
            try:
                return list(open_pyramid(self.source, storage_options=so))
            except AxesError:  # a plain array without dimension names: the recorded dims
                return list(open_pyramid(self.source, storage_options=so,
                                         axes="".join(self.sidecar.dims).upper()))
        except VolumeNotFoundError as err:
            raise VolumeNotFoundError(
                f"the source of side-car {self.path!r} is missing: {self.sidecar.source!r} "
                f"({err}). Fix: restore the source, or give its new location (source= / the "
                "widget's source field); the side-car checks that it is the same data.") from err

    def check_source(self) -> None:
        """Raise :class:`SidecarMismatchError` unless the source is the one the side-car was
        computed from (its stored fingerprint: metadata and a few raw chunks)."""
        sc = self.sidecar
        if not 0 <= sc.level < len(self.levels):
            raise SidecarMismatchError(
                f"side-car {self.path!r} was computed on pyramid level {sc.level}, but "
                f"{self.source!r} has {len(self.levels)} level(s). Fix: recompute the side-car.")
        vol = self.levels[sc.level]
        try:
            fp = source_fingerprint(vol, self.storage_options or None, url=sc.source)
        except (OSError, ValueError) as err:
            raise VolumeError(f"cannot fingerprint the source {self.source!r} of side-car "
                              f"{self.path!r} ({type(err).__name__}: {err}).") from err
        if fp != sc.attrs["fingerprint"].get("source"):
            raise SidecarMismatchError(
                f"the source {self.source!r} changed since side-car {self.path!r} was computed "
                "(fingerprint mismatch: its metadata or chunks differ). Its decisions would be "
                "drawn over other data. Fix: recompute the side-car (`patchsieve compute ... "
                "--overwrite`), or open the side-car of this data.")

    # ------------------------------------------------------------------ label geometry
    def _level0_geometry(self) -> Any:
        """The region grid the labels are drawn on: level 0 of the source pyramid."""
        if self.sidecar.level == 0:
            return None
        from patchsieve.analysis import level0_geometry

        return level0_geometry(self.sidecar, storage_options=self.storage_options or None)

    @property
    def label_geometry(self) -> Any:
        """:class:`~patchsieve.grid.VolumeGeometry` of the labels (level 0 of the source)."""
        return self._level0 if self._level0 is not None else self.sidecar.geometry

    @property
    def label_shape(self) -> tuple[int, ...]:
        return tuple(self.label_geometry.spatial_shape)

    @property
    def label_patch(self) -> tuple[int, ...]:
        return tuple(self.label_geometry.patch_size)

    def keep_cells(self, filter_out: np.ndarray, name: str | None = None) -> np.ndarray:
        """Cell-level keep mask ``(*sample_shape, *cell_shape)`` of level 0 for per-region
        decisions ``filter_out`` of shape ``(n_samples, *grid_shape)`` of the side-car.

        A side-car of pyramid level k > 0 is mapped onto the level-0 region grid with
        :func:`patchsieve.analysis.decisions_at` first.
        """
        sc = self.sidecar
        fo = np.asarray(filter_out, dtype=bool).reshape((sc.n_samples, *sc.grid_shape))
        if self._level0 is not None:
            from patchsieve.analysis import decisions_at

            fo = decisions_at(sc, self._level0, name or sc.filter_names[0], values=fo)
        geo = self.label_geometry
        keep = cover_cells(~fo, geo.cell_shape)
        return keep.reshape((*sc.sample_shape, *geo.cell_shape))

    # ------------------------------------------------------------------ layer data
    def _placement(self, dims: tuple[str, ...]) -> dict[str, Any]:
        attrs = self.levels[0].attrs
        scale = attrs.get("scale", {}) or {}
        trans = attrs.get("translation", {}) or {}
        out: dict[str, Any] = {
            "scale": [float(scale.get(d, 1.0)) for d in dims],
            "translate": [float(trans.get(d, 0.0)) for d in dims],
            "axis_labels": list(dims),
        }
        units = attrs.get("units", {}) or {}
        if units and _valid_units(units.values()):
            out["units"] = [units.get(d, "pixel") for d in dims]
        return out

    def contrast_limits(self) -> list[list[float]] | None:
        """Per-channel display range from the side-car's stored percentiles (p0.1, p99.9)."""
        pct = self.sidecar.attrs.get("percentiles") or {}
        lo, hi = pct.get("p0.1"), pct.get("p99.9")
        n = self.sidecar.n_channels
        if not isinstance(lo, list) or not isinstance(hi, list) or len(lo) != n or len(hi) != n:
            logger.info("side-car %s: no per-channel percentiles stored; napari computes the "
                        "contrast limits", self.path)
            return None
        out = []
        for a, b in zip(lo, hi):
            a, b = float(a), float(b)
            if not (np.isfinite(a) and np.isfinite(b)):
                return None
            out.append([a, b if b > a else a + 1.0])
        return out

    def image_data(self) -> LayerData:
        """The source as one Image layer (split into channels by napari's ``channel_axis``)."""
        dims = tuple(self.levels[0].dims)
        data = [lvl.data for lvl in self.levels]
        name = _stem(self.source)
        kwargs: dict[str, Any] = {
            **self._placement(tuple(d for d in dims if d != "c")),
            "name": name,
            "multiscale": len(data) > 1,
            "metadata": {"patchsieve": {"role": "source", "sidecar": self.path}},
        }
        limits = self.contrast_limits()
        if "c" in dims:
            kwargs["channel_axis"] = dims.index("c")
            names = self.levels[0].attrs.get("channel_names")
            n = self.levels[0].sizes["c"]
            kwargs["name"] = [f"{name} [{names[i] if names else i}]" for i in range(n)]
            if limits is not None:
                kwargs["contrast_limits"] = limits
        elif limits is not None:
            kwargs["contrast_limits"] = limits[0]
        return (data if len(data) > 1 else data[0], kwargs, "image")

    def labels_data(self, name: str) -> LayerData:
        """Filter ``name``'s decisions as a multiscale Labels layer (1 = kept, "signal")."""
        sc = self.sidecar
        dims = (*sc.sample_dims, *sc.spatial_dims)
        levels = self.labels[name].levels
        kwargs: dict[str, Any] = {
            **self._placement(dims),
            "name": f"{name}: kept",
            "multiscale": len(levels) > 1,
            "opacity": 0.45,
            "colormap": {0: "transparent", 1: KEPT_COLOUR, None: "transparent"},
            "metadata": {"patchsieve": {"role": "decisions", "sidecar": self.path,
                                        "filter": name, "scene": self}},
        }
        return (levels if len(levels) > 1 else levels[0], kwargs, "labels")

    def layer_data(self) -> list[LayerData]:
        """The reader's result: the source Image, then one Labels layer per filter."""
        return [self.image_data(), *(self.labels_data(n) for n in self.sidecar.filter_names)]

    def reload(self) -> None:
        """Re-open the side-car (after a threshold was applied) and redraw from its decisions."""
        self.sidecar = open_sidecar(self.path, storage_options=self.storage_options or None)
        for name, lab in self.labels.items():
            lab.update(self.keep_cells(self.sidecar.filter_out(name), name))


def read_sidecar(path: str | os.PathLike[str], *,
                 storage_options: Mapping[str, Any] | None = None,
                 source: str | None = None) -> list[LayerData]:
    """Layer data for a side-car: the source Image layer(s) and one Labels layer per filter.

    What ``viewer.open(path, plugin="patchsieve")`` adds (see :class:`SidecarScene` for the
    parameters and errors).

    Examples
    --------
    >>> import tempfile, os, patchsieve as ps
    >>> from patchsieve.demo import write_ome_zarr
    >>> d = tempfile.mkdtemp()
    >>> img = np.random.default_rng(1).poisson(5.0, (2, 48, 48)).astype("uint16")
    >>> src = write_ome_zarr(os.path.join(d, "cells.ome.zarr"), img, "cyx", chunks=(1, 48, 48))
    >>> sc = ps.compute(src, ps.MaxPatchFilterConfig(threshold=8.0), (16, 16),
    ...                 cluster={"processes": False, "n_workers": 1})
    >>> image, labels = read_sidecar(sc.path)
    >>> image[1]["channel_axis"], image[1]["name"], labels[2]
    (0, ['cells [0]', 'cells [1]'], 'labels')
    """
    return SidecarScene(path, storage_options=storage_options, source=source).layer_data()


def _stem(url: str) -> str:
    name = url.rstrip("/").split("/")[-1] or "source"
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _valid_units(units: Any) -> bool:
    """Whether napari (pint) understands every NGFF unit name."""
    try:
        import pint

        reg = pint.get_application_registry()
        for u in units:
            reg.Unit(str(u))
    except Exception:  # noqa: BLE001 - pint missing or a unit it does not know
        return False
    return True
