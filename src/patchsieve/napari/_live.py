"""Live thresholds over a side-car's stored region statistics (Qt-free model of the widget).

Everything here is the library's own logic: decisions come from
:func:`patchsieve.regions.filter_out_from_stats` (CAREamics' tie rules), patches per epoch from
:func:`patchsieve.sidecar.epoch_patches` (the sampler's rule), suggestions from
:func:`patchsieve.analysis.suggest_threshold` and Apply is
:func:`patchsieve.analysis.apply_threshold` (what ``patchsieve suggest-threshold --apply`` runs).
The volume is never read; a threshold change costs a few vectorised passes over the statistics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.analysis import (
    ThresholdSuggestion,
    apply_threshold,
    suggest_threshold,
    threshold_field,
)
from patchsieve.config import parse_filter_config
from patchsieve.napari._scene import SidecarScene
from patchsieve.regions import filter_out_from_stats, required_stats
from patchsieve.sidecar import Sidecar, epoch_patches
from patchsieve.volume import open_store

logger = logging.getLogger(__name__)

__all__ = ["LiveThreshold", "ThresholdState", "live_sidecar"]


@dataclass(frozen=True)
class ThresholdState:
    """What a threshold does to the regions of a side-car (all counts over every sample)."""

    threshold: float
    n_regions: int
    n_background: int
    patches_per_epoch: int
    applied: bool

    @property
    def background_fraction(self) -> float:
        return self.n_background / self.n_regions if self.n_regions else 0.0

    @property
    def n_kept(self) -> int:
        return self.n_regions - self.n_background


class LiveThreshold:
    """Move one filter's threshold and keep its decisions, counts and Labels layer in step.

    Parameters
    ----------
    scene : SidecarScene
        The opened side-car; its ``labels[filter]`` pyramid is updated on every change.
    filter : str, optional
        Filter name (default: the side-car's only filter).
    stat : str, optional
        MeanStd only: move the ``"mean"`` (default) or the ``"std"`` threshold.

    Attributes
    ----------
    field, stat : str
        The config field moved (``"threshold"``, ``"mean_threshold"``, ``"coverage"`` ...) and
        the region statistic it is compared with.
    values : numpy.ndarray of float64
        The statistic's finite values, sorted (histogram, slider range, quantiles).
    state : ThresholdState
        The current threshold and its counts.

    Examples
    --------
    >>> import tempfile, os, patchsieve as ps
    >>> from patchsieve.demo import write_ome_zarr
    >>> d = tempfile.mkdtemp()
    >>> img = np.random.default_rng(0).poisson(5.0, (64, 64)).astype("uint16")
    >>> img[:32] += 20
    >>> src = write_ome_zarr(os.path.join(d, "img.ome.zarr"), img, "yx", chunks=(32, 32))
    >>> sc = ps.compute(src, ps.MeanStdPatchFilterConfig(mean_threshold=0.0), (16, 16),
    ...                 cluster={"processes": False, "n_workers": 1})
    >>> live = LiveThreshold(SidecarScene(sc.path))
    >>> live.field, live.state.n_background
    ('mean_threshold', 0)
    >>> s = live.set_threshold(10.0)
    >>> s.n_background, s.n_regions, s.applied
    (9, 16, False)
    >>> np.asarray(live.scene.labels["mean_std"].levels[-1]).tolist()
    [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    """

    def __init__(self, scene: SidecarScene, filter: str | None = None,  # noqa: A002
                 *, stat: str | None = None):
        self.scene = scene
        self.filter = scene.sidecar.resolve_filter(filter)
        self._listeners: list[Callable[[ThresholdState], None]] = []
        self._select(stat)

    # ------------------------------------------------------------------ set-up
    def _select(self, stat: str | None) -> None:
        sc = self.scene.sidecar
        self.config = sc.config(self.filter)
        self.ndim = len(sc.spatial_dims)
        self.field, self.stat = threshold_field(self.config, self.ndim, stat)
        stats = sc.stats
        self._stats = {s: stats[s] for s in required_stats(self.config, self.ndim)}
        values = np.asarray(self._stats[self.stat], dtype=np.float64).ravel()
        self.values: NDArray[np.float64] = np.sort(values[np.isfinite(values)])
        self._grid = (sc.n_samples, *sc.grid_shape)
        self._spatial = tuple(sc.shape[d] for d in sc.spatial_dims)
        self._patch = tuple(sc.patch_size[d] for d in sc.spatial_dims)
        self._p = float(self.config.filtered_patch_prob)
        applied = getattr(self.config, self.field, None)
        self.applied_threshold = None if applied is None else float(applied)
        start = self.applied_threshold
        if start is None:
            start = float(np.median(self.values)) if self.values.size else 0.0
        self.applied_state = self._evaluate(start, update_labels=False) \
            if self.applied_threshold is not None else None
        self.state = self._evaluate(start, update_labels=False)

    def select_stat(self, stat: str) -> ThresholdState:
        """MeanStd: switch the threshold moved between ``"mean"`` and ``"std"``."""
        self._select(stat)
        return self.set_threshold(self.state.threshold)

    @property
    def stat_choices(self) -> list[str]:
        """Statistics whose threshold this filter has (``["mean", "std"]`` for MeanStd)."""
        return ["mean", "std"] if self.config.name == "mean_std" else [self.stat]

    @property
    def value_range(self) -> tuple[float, float]:
        """Slider range: the statistic's range (``[0, 1]`` for a coverage)."""
        if self.field == "coverage":
            return 0.0, 1.0
        if not self.values.size:
            return 0.0, 1.0
        lo, hi = float(self.values[0]), float(self.values[-1])
        if hi <= lo:
            hi = lo + 1.0
        pad = (hi - lo) * 1e-3
        return lo - pad, hi + pad

    # ------------------------------------------------------------------ live update
    def config_with(self, threshold: float) -> Any:
        """The filter config with ``threshold`` in the moved field (validated)."""
        return parse_filter_config({**self.config.model_dump(), self.field: float(threshold)})

    def _evaluate(self, threshold: float, *, update_labels: bool = True) -> ThresholdState:
        cfg = self.config_with(threshold)
        fo = filter_out_from_stats(cfg, self._stats, ndim=self.ndim).reshape(self._grid)
        weights = np.where(fo, self._p, 1.0)
        patches = int(epoch_patches(weights, self._spatial, self._patch).sum())
        if update_labels:
            self.scene.labels[self.filter].update(self.scene.keep_cells(fo, self.filter))
        self._filter_out = fo
        applied = self.applied_threshold is not None and math.isclose(
            float(threshold), self.applied_threshold, rel_tol=0.0, abs_tol=0.0)
        return ThresholdState(float(threshold), int(fo.size), int(np.count_nonzero(fo)),
                              patches, applied)

    def set_threshold(self, threshold: float) -> ThresholdState:
        """Move the threshold: recompute decisions, counts and the Labels pyramid.

        Raises
        ------
        ConfigError
            A value the filter config refuses (e.g. a coverage outside ``[0, 1]``).
        """
        self.state = self._evaluate(threshold)
        for listener in list(self._listeners):
            listener(self.state)
        return self.state

    def on_change(self, listener: Callable[[ThresholdState], None]) -> None:
        """Call ``listener(state)`` after every threshold change."""
        self._listeners.append(listener)

    @property
    def filter_out(self) -> NDArray[np.bool_]:
        """Current per-region decisions (True = background), ``(n_samples, *grid_shape)``."""
        return self._filter_out

    def histogram(self, bins: int = 128) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Counts and bin edges of the statistic over :attr:`value_range`."""
        lo, hi = self.value_range
        counts, edges = np.histogram(self.values, bins=bins, range=(lo, hi))
        return counts.astype(np.int64), edges

    def share_below(self, threshold: float) -> float:
        """Share of regions whose statistic is below ``threshold`` (sorted-values lookup)."""
        if not self.values.size:
            return 0.0
        return float(np.searchsorted(self.values, threshold, side="left")) / self.values.size

    # ------------------------------------------------------------------ suggest / apply
    def suggest(self, method: str = "otsu",
                background_fraction: float | None = None) -> ThresholdSuggestion:
        """A threshold from :func:`patchsieve.analysis.suggest_threshold` (not applied)."""
        if method == "otsu":
            background_fraction = None
        return suggest_threshold(self.scene.sidecar, self.filter, method=method,
                                 background_fraction=background_fraction, stat=self.stat)

    def apply(self, threshold: float | None = None) -> Sidecar:
        """Write the threshold (default: the current one) into the side-car, exactly as
        ``patchsieve suggest-threshold --apply`` does, and show the stored decisions.

        :func:`patchsieve.analysis.apply_threshold` rewrites the decisions, weights, totals,
        normalisation and the filter's label image under the side-car lock (:meth:`write`);
        then the scene is re-read (:meth:`reload`).

        Raises
        ------
        SidecarLockedError
            Another live process holds the side-car's lock (nothing is written).
        """
        self.write(self.state.threshold if threshold is None else threshold)
        self.reload()
        return self.scene.sidecar

    def write(self, threshold: float) -> None:
        """Only the storage part of :meth:`apply` (safe to run in a worker thread)."""
        apply_threshold(self.scene.path, self.filter, float(threshold), field=self.field,
                        storage_options=self.scene.storage_options or None)

    def reload(self) -> None:
        """Re-read the side-car after a write: applied threshold, decisions and labels."""
        self.scene.reload()
        self._select(self.stat)
        self.scene.labels[self.filter].update(self.scene.keep_cells(self._filter_out, self.filter))

    def preview_sidecar(self) -> Sidecar:
        """The side-car as the sampler would see it with the current (unapplied) threshold."""
        return live_sidecar(self.scene, self.filter, self._filter_out, self._p)


class _LiveSidecar(Sidecar):
    """A side-car whose decisions for one filter are replaced in memory (nothing written).

    The replacement is served through every reader method the sampler uses: ``filter_out`` and
    ``weights`` (whole arrays), ``decision_array`` / ``decision_block`` (block by block, from
    in-memory zarr arrays chunked like the stored ones) and ``sample_totals`` (recounted), so
    :class:`~patchsieve.dataset.PatchDataset` at ``num_workers=0`` samples the live threshold.
    """

    def __init__(self, base: Sidecar, source: str, name: str, filter_out: NDArray[np.bool_],
                 p: float, storage_options: Any):
        import zarr

        store = open_store(base.path, storage_options=storage_options, read_only=True)
        super().__init__(zarr.open_group(store, mode="r"), base.path, storage_options)
        self._live_name = name
        self._live_fo = np.asarray(filter_out, dtype=bool)
        self._live_w = np.where(self._live_fo, p, 1.0)
        self._live_source = source
        shape = (*self.sample_shape, *self.grid_shape)
        self._live_arrays: dict[str, Any] = {}
        for what, values in (("filter_out", self._live_fo), ("weight", self._live_w)):
            stored = super().decision_array(name, what)
            arr = zarr.create_array(zarr.storage.MemoryStore(), shape=shape,
                                    chunks=stored.chunks, dtype=values.dtype)
            arr[...] = values.reshape(shape)
            self._live_arrays[what] = arr
        stored_totals = super().sample_totals(name)
        n_bg = self._live_fo.reshape(self.n_samples, -1).sum(axis=1).astype(np.int64)
        self._live_totals = {
            "n_regions": stored_totals["n_regions"],
            "n_background": n_bg,
            "weight_sum": self._live_w.reshape(self.n_samples, -1).sum(axis=1),
            "n_patches_per_epoch": epoch_patches(
                self._live_w.reshape((self.n_samples, *self.grid_shape)),
                [self.shape[d] for d in self.spatial_dims],
                [self.patch_size[d] for d in self.spatial_dims]),
        }

    @property
    def source(self) -> str:  # the located source (it may have moved; fingerprint checked)
        return self._live_source

    def filter_out(self, name: str) -> np.ndarray:
        if name == self._live_name:
            return self._live_fo.copy()
        return super().filter_out(name)

    def weights(self, name: str) -> np.ndarray:
        if name == self._live_name:
            return self._live_w.copy()
        return super().weights(name)

    def decision_array(self, name: str, what: str = "filter_out") -> Any:
        if name == self._live_name and what in self._live_arrays:
            return self._live_arrays[what]
        return super().decision_array(name, what)

    def sample_totals(self, name: str) -> dict[str, np.ndarray]:
        if name == self._live_name:
            return {k: np.array(v, copy=True) for k, v in self._live_totals.items()}
        return super().sample_totals(name)


def live_sidecar(scene: SidecarScene, name: str, filter_out: NDArray[np.bool_],
                 filtered_patch_prob: float) -> Sidecar:
    """A read-only :class:`~patchsieve.sidecar.Sidecar` whose decisions for filter ``name`` are
    ``filter_out`` (weights ``filtered_patch_prob`` for background): what
    :func:`patchsieve.analysis.preview_patches` samples from to preview an unapplied threshold.

    Examples
    --------
    >>> import tempfile, os, patchsieve as ps
    >>> from patchsieve.demo import write_ome_zarr
    >>> d = tempfile.mkdtemp()
    >>> img = np.random.default_rng(0).poisson(5.0, (32, 32)).astype("uint16")
    >>> src = write_ome_zarr(os.path.join(d, "img.ome.zarr"), img, "yx", chunks=(32, 32))
    >>> sc = ps.compute(src, ps.MaxPatchFilterConfig(threshold=0.0), (16, 16),
    ...                 cluster={"processes": False, "n_workers": 1})
    >>> view = live_sidecar(SidecarScene(sc.path), "max", np.ones((1, 2, 2), bool), 0.5)
    >>> view.weights("max").tolist(), bool(sc.filter_out("max").any())
    ([[[0.5, 0.5], [0.5, 0.5]]], False)
    """
    return _LiveSidecar(scene.sidecar, scene.source, name, filter_out, filtered_patch_prob,
                        scene.storage_options or None)
