"""Read access to a side-car: :class:`Sidecar` and :func:`open_sidecar`."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from patchsieve._version import __version__
from patchsieve.errors import (
    ConfigError,
    SidecarError,
    SidecarIncompleteError,
    SidecarMismatchError,
)
from patchsieve.grid import VolumeGeometry
from patchsieve.sidecar._chunks import read_stored
from patchsieve.sidecar._format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SAMPLE_TOTALS,
    SUFFIX,
    decision_key,
    stats_key,
)
from patchsieve.volume import is_remote, local_path, open_store, safe_message

logger = logging.getLogger(__name__)


class Sidecar:
    """Read access to a side-car (see ``docs/sidecar-api.md`` for the contract).

    Use :func:`open_sidecar` to get one; :func:`patchsieve.compute` returns one.
    """

    def __init__(self, group: zarr.Group, path: str, storage_options: Mapping[str, Any] | None = None):
        self._group = group
        self.path = str(path)
        self._storage_options = dict(storage_options or {})
        meta = group.attrs.asdict().get("patchsieve")
        if not isinstance(meta, Mapping) or meta.get("format") != FORMAT_NAME:
            raise SidecarError(
                f"{self.path!r} is not a patchsieve side-car (no attrs['patchsieve'] with format "
                f"{FORMAT_NAME!r}). Fix: pass the path of a side-car written by patchsieve.compute."
            )
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise SidecarMismatchError(
                f"side-car {self.path!r} has format_version {version}; this patchsieve "
                f"({__version__}) reads version {FORMAT_VERSION}. Fix: recompute it with "
                f"`patchsieve compute ... --overwrite`."
            )
        missing = [k for k in ("source", "geometry", "fingerprint", "filters", "status")
                   if not isinstance(meta.get(k), Mapping)]
        if missing:
            raise SidecarError(
                f"side-car {self.path!r} is damaged: attrs['patchsieve'] lacks {missing}. Fix: "
                "recompute it with `patchsieve compute ... --overwrite`."
            )
        self.attrs: dict[str, Any] = dict(meta)
        self._cache: dict[str, np.ndarray] = {}

    @property
    def storage_options(self) -> dict[str, Any]:
        """The fsspec options this side-car was opened with (a copy; never stored in it)."""
        return dict(self._storage_options)

    # ---- geometry
    @property
    def source(self) -> str:
        """The source's location as recorded by the filter pass (see :meth:`locate_source`)."""
        return str(self.attrs["source"]["url"])

    def locate_source(self) -> str:
        """The source's location now: :attr:`source`, or, when that is a relative local path
        that does not exist from the current directory, the same path (or its last component)
        beside the side-car, if it exists there; otherwise :attr:`source` unchanged.

        A side-car records the source as it was given, so a side-car computed with a relative
        path is still found from another working directory when data and side-car sit together.
        """
        url = self.source
        if url.startswith("<") or is_remote(url) or os.path.isabs(local_path(url)) \
                or os.path.exists(local_path(url)) or is_remote(self.path):
            return url
        here = os.path.dirname(os.path.abspath(local_path(self.path)))
        for cand in (os.path.join(here, url), os.path.join(here, os.path.basename(url))):
            if os.path.exists(cand):
                return cand
        return url

    @property
    def array_path(self) -> str:
        return str(self.attrs["source"].get("array_path", ""))

    @property
    def level(self) -> int:
        return int(self.attrs["source"].get("level", 0))

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.attrs["source"]["dims"])

    @property
    def shape(self) -> dict[str, int]:
        return {d: int(n) for d, n in zip(self.dims, self.attrs["source"]["shape"])}

    @property
    def chunks(self) -> dict[str, int]:
        return {d: int(n) for d, n in zip(self.dims, self.attrs["source"]["chunks"])}

    @property
    def dtype(self) -> str:
        return str(self.attrs["source"]["dtype"])

    @functools.cached_property
    def geometry(self) -> VolumeGeometry:
        """The volume's region geometry (placed in space with the source's scale/translation)."""
        return VolumeGeometry.from_attrs(self.attrs["geometry"], self.attrs["source"])

    @property
    def sample_dims(self) -> tuple[str, ...]:
        return self.geometry.sample_dims

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.geometry.sample_shape

    @property
    def n_samples(self) -> int:
        return self.geometry.n_samples

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        return self.geometry.spatial_dims

    @property
    def patch_size(self) -> dict[str, int]:
        return self.geometry.patch_by_dim

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self.geometry.grid_shape

    @property
    def ref_channel(self) -> int:
        return self.geometry.ref_channel

    @property
    def n_channels(self) -> int:
        return self.geometry.n_channels

    # ---- status
    @property
    def is_complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def status(self) -> dict[str, str]:
        return dict(self.attrs.get("status", {}))

    # ---- filters
    @property
    def filter_names(self) -> list[str]:
        return list(self.attrs.get("filters", {}))

    def config(self, name: str) -> Any:
        """The filter config (pydantic model) stored under ``name``."""
        from patchsieve.config import parse_filter_config

        self._check_filter(name)
        try:
            return parse_filter_config(self.attrs["filters"][name])
        except ConfigError as err:
            raise SidecarError(
                f"side-car {self.path!r}: the stored config of filter {name!r} is invalid ({err}). "
                "Fix: recompute it with `patchsieve compute ... --overwrite`."
            ) from err

    def resolve_filter(self, name: str | None = None, config: Any = None) -> str:
        """The name of one filter of this side-car: ``name`` itself, the filter whose stored
        config equals ``config``, or the only filter.

        Raises
        ------
        ConfigError
            ``name`` is not a filter of the side-car, or neither is given and it has several.
        SidecarMismatchError
            No stored filter has the config ``config``.
        """
        names = self.filter_names
        if name is not None:
            self._check_filter(name)
            return name
        if config is not None:
            want = config.model_dump() if hasattr(config, "model_dump") else dict(config)
            for n in names:
                if self.config(n).model_dump() == want:
                    return n
            raise SidecarMismatchError(
                f"patch_filter_config {config!r} is not in side-car {self.path!r} (filters: "
                f"{[self.config(n) for n in names]}). Fix: recompute the side-car with this "
                "filter, or drop sidecar= to let the filter pass run.")
        if len(names) != 1:
            raise ConfigError(
                f"side-car {self.path!r} has filters {names}. Fix: pass the filter name "
                "(filter= / filter_name= / --filter) with one of them.")
        return names[0]

    def require_patch_size(self, patch_size: Any) -> None:
        """Raise :class:`SidecarMismatchError` unless ``patch_size`` (``None`` passes) is the
        side-car's: its region grid was built for that size."""
        if patch_size is None:
            return
        from patchsieve.grid import normalize_patch_size

        ps = normalize_patch_size(patch_size, self.spatial_dims)
        if dict(ps) != self.patch_size:
            raise SidecarMismatchError(
                f"patch_size {ps} differs from the side-car's {self.patch_size}: its region "
                "grid was built for that size. Fix: pass the side-car's patch_size or recompute "
                "the side-car for the new size.")

    def _check_filter(self, name: str) -> None:
        if name not in self.attrs.get("filters", {}):
            raise ConfigError(
                f"filter {name!r} is not in side-car {self.path!r}; it has {self.filter_names}. "
                "Fix: pass one of those names, or compute the side-car with that filter."
            )

    def _flat(self, key: str) -> np.ndarray:
        if key not in self._cache:
            try:
                arr = self._group[key]
            except KeyError as err:
                raise SidecarIncompleteError(
                    f"side-car {self.path!r} lacks array {key!r}. Fix: rerun `patchsieve compute` "
                    "on the same output to complete it."
                ) from err
            try:
                self._cache[key] = np.asarray(arr[...])
            except Exception as err:  # noqa: BLE001 - codec / storage errors of a damaged side-car
                raise SidecarError(
                    f"side-car {self.path!r}: array {key!r} cannot be read ({type(err).__name__}: "
                    f"{safe_message(err)}). Fix: recompute it with `patchsieve compute ... "
                    "--overwrite`."
                ) from err
        return self._cache[key]

    def _per_sample(self, key: str) -> np.ndarray:
        a = self._flat(key)
        n_s = len(self.sample_shape)
        return a.reshape((self.n_samples, *a.shape[n_s:]))

    def filter_out(self, name: str) -> np.ndarray:
        """Per-region CAREamics ``filter_out`` (True = background), shape (n_samples, *grid_shape)."""
        self._check_filter(name)
        return self._per_sample(decision_key(name, "filter_out")).astype(bool)

    def weights(self, name: str) -> np.ndarray:
        """Per-region sampling weight (1 kept, ``filtered_patch_prob`` background), float64."""
        self._check_filter(name)
        w = self._per_sample(decision_key(name, "weight")).astype(np.float64)
        return w

    # ---- block-wise access (nothing of the whole grid is loaded)
    def decision_array(self, name: str, what: str = "filter_out") -> zarr.Array:
        """The stored array ``what`` (``filter_out`` or ``weight``) of filter ``name``, unread:
        shape ``(*sample_shape, *grid_shape)``, read block by block (:meth:`decision_block`).

        Raises
        ------
        SidecarIncompleteError
            The side-car lacks the array.
        """
        self._check_filter(name)
        if what not in ("filter_out", "weight"):
            raise ConfigError(f"what must be 'filter_out' or 'weight'; got {what!r}.")
        key = decision_key(name, what)
        try:
            arr = self._group[key]
        except KeyError as err:
            raise SidecarIncompleteError(
                f"side-car {self.path!r} lacks array {key!r}. Fix: rerun `patchsieve compute` "
                "on the same output to complete it.") from err
        return arr  # type: ignore[return-value]

    def decision_block(self, name: str, sample: int, lo: Sequence[int], hi: Sequence[int],
                       what: str = "filter_out") -> np.ndarray:
        """The regions ``[lo, hi)`` (spatial grid coordinates) of flat sample ``sample`` of the
        decision array ``what`` of filter ``name``: bool for ``filter_out``, float64 for
        ``weight``. Reads only the storage chunks the box touches.

        Examples
        --------
        >>> sc = open_sidecar(path)  # doctest: +SKIP
        >>> sc.decision_block("max", 0, (0, 0), (2, 3)).shape  # doctest: +SKIP
        (2, 3)
        """
        arr = self.decision_array(name, what)
        index = np.unravel_index(int(sample), self.sample_shape) if self.sample_shape else ()
        sel = (*[int(i) for i in index],
               *[slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)])
        block = read_stored(arr, sel, f"side-car {self.path!r}: array "
                                      f"{decision_key(name, what)!r}")
        return block.astype(bool) if what == "filter_out" else block.astype(np.float64)

    def sample_totals(self, name: str) -> dict[str, np.ndarray]:
        """Per-sample totals the sampler needs: n_regions, n_background, weight_sum, n_patches_per_epoch."""
        self._check_filter(name)
        out = {}
        for key in SAMPLE_TOTALS:
            out[key] = self._flat(decision_key(name, key)).reshape(self.n_samples)
        return out

    @property
    def stat_names(self) -> list[str]:
        return list(self.attrs.get("stats", []))

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Region statistics, each (n_samples, *grid_shape) float64."""
        return {s: self._per_sample(stats_key(s)) for s in self.stat_names}

    def progress(self) -> dict[str, dict[str, int]]:
        """Blocks written / total per resume log (``progress/*``) of the filter pass."""
        out: dict[str, dict[str, int]] = {}
        try:
            group = self._group["progress"]
        except KeyError:
            return out
        for key, arr in group.arrays():
            marks = np.asarray(arr[...])
            out[key] = {"done": int(np.count_nonzero(marks)), "total": int(marks.size)}
        return out

    def normalization(self) -> dict[str, Any]:
        """Per-channel normalisation statistics stored by the filter pass."""
        return dict(self.attrs.get("normalization", {}))

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "INCOMPLETE"
        return (f"<Sidecar {self.path!r} {state} source={self.source!r} dims={self.dims} "
                f"patch={self.patch_size} filters={self.filter_names}>")


def open_sidecar(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    allow_incomplete: bool = False,
) -> Sidecar:
    """Open a side-car written by :func:`patchsieve.compute`.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL of the side-car (``*.patchsieve.zarr``).
    storage_options : mapping, optional
        fsspec options (credentials, endpoint) for remote side-cars; never stored.
    allow_incomplete : bool
        Open a side-car whose run did not finish (for inspection only).

    Raises
    ------
    SidecarIncompleteError
        The side-car's run did not finish (and ``allow_incomplete`` is False).
    SidecarMismatchError
        It was written by another format version.
    """
    path = str(path)
    store = open_store(path, storage_options=storage_options, read_only=True)
    try:
        group = zarr.open_group(store, mode="r")
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise SidecarError(
            f"no side-car at {path!r} ({type(err).__name__}). Fix: run `patchsieve compute` first, "
            "or pass the path it printed."
        ) from err
    sc = Sidecar(group, path, storage_options)
    if not sc.is_complete and not allow_incomplete:
        raise SidecarIncompleteError(
            f"side-car {path!r} is not complete (status {sc.status}); its run was interrupted or is "
            "still going. Fix: rerun `patchsieve compute` with the same arguments to resume it."
        )
    return sc


def is_sidecar(path: str | os.PathLike[str],
               storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``path`` names a side-car (its suffix, or a root group with patchsieve attrs)."""
    if str(path).rstrip("/").endswith(SUFFIX):
        return True
    try:
        g = zarr.open_group(open_store(os.fspath(path), storage_options=storage_options), mode="r")
        return "patchsieve" in g.attrs
    except Exception:  # noqa: BLE001 - anything unreadable as a side-car is not one
        return False
