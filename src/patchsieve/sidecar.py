"""The side-car: a Zarr v3 group beside the data holding region statistics, decisions and weights.

Format version 1 (documented in ``docs/sidecar-format.md``)::

    <source name>.patchsieve.zarr/
      zarr.json                       root attrs["patchsieve"]: format, versions, source, fingerprints,
                                      geometry, filters, status, normalization
      stats/<stat>                    float64 (*sample_shape, *grid_shape): one value per region
      cells/sum, cells/sumsq          float64 (n_channels, *sample_shape, *cell_shape): per-cell partial
                                      sums for normalisation statistics under any decision
      progress/stats, progress/cells  uint8 block markers (1 = block written), the resume log
      decisions/<filter>/filter_out   bool    (*sample_shape, *grid_shape), CAREamics ``filter_out``
      decisions/<filter>/weight       float64 (*sample_shape, *grid_shape): 1 kept, p background
      decisions/<filter>/n_background, n_patches, weight_sum   int64/float64 (*sample_shape)
      weights/<name>                  reserved: user-supplied region weights (same shape as stats)
      labels/<filter>/                OME-Zarr (NGFF) multiscale label image: 1 = signal, 0 = background

A reader never accepts a side-car whose ``complete`` flag is false (:class:`SidecarIncompleteError`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from patchsieve._version import __version__
from patchsieve.errors import (
    ConfigError,
    SidecarError,
    SidecarIncompleteError,
    SidecarLockedError,
    SidecarMismatchError,
    StorageError,
)

logger = logging.getLogger(__name__)

FORMAT_NAME = "patchsieve-sidecar"
FORMAT_VERSION = 1
SUFFIX = ".patchsieve.zarr"
LOCK_NAME = "patchsieve.lock"
#: A lock whose heartbeat is older than this is stale (seconds); the writer refreshes it per block.
LOCK_STALE_AFTER = 600.0

__all__ = [
    "FORMAT_VERSION",
    "Sidecar",
    "SidecarLock",
    "is_remote",
    "open_sidecar",
    "open_store",
]


def is_remote(path: str) -> bool:
    """True when ``path`` is an fsspec URL other than a local ``file://`` one."""
    return "://" in str(path) and not str(path).startswith("file://")


def _local_path(path: str) -> str:
    return str(path)[len("file://") :] if str(path).startswith("file://") else str(path)


def open_store(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    read_only: bool = True,
) -> zarr.abc.store.Store:
    """Open a zarr store for a local path or an fsspec URL (credentials only in ``storage_options``)."""
    path = str(path)
    if is_remote(path):
        return FsspecStore.from_url(path, storage_options=dict(storage_options or {}),
                                    read_only=read_only)
    return LocalStore(_local_path(path), read_only=read_only)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), hex, 32 chars."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


# --------------------------------------------------------------------------------------- lock
@dataclass
class SidecarLock:
    """An advisory write lock stored as ``patchsieve.lock`` in the side-car root.

    The lock records the owner's host, pid and a heartbeat. A lock is *stale* (and taken over) when
    its owner is a dead process on this host, or its heartbeat is older than ``LOCK_STALE_AFTER``
    seconds. A second live writer gets :class:`SidecarLockedError` naming the owner.
    """

    store: Any
    token: str = ""

    def _read(self) -> dict[str, Any] | None:
        buf = _sync_get(self.store, LOCK_NAME)
        if buf is None:
            return None
        try:
            return json.loads(buf.decode())
        except ValueError:
            return {"host": "?", "pid": -1, "heartbeat": 0.0}

    @staticmethod
    def _is_stale(info: Mapping[str, Any]) -> bool:
        import time

        if info.get("host") == socket.gethostname():
            pid = int(info.get("pid", -1))
            if pid <= 0:
                return True
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            # same host, live pid: stale only if the pid was recycled long ago (heartbeat very old)
        return time.time() - float(info.get("heartbeat", 0.0)) > LOCK_STALE_AFTER

    def acquire(self) -> None:
        """Take the lock atomically (create-if-absent) or raise :class:`SidecarLockedError`."""
        import secrets

        self.token = secrets.token_hex(8)
        for _ in range(3):
            if _sync_set_if_absent(self.store, LOCK_NAME, self._payload(_now())):
                return
            info = self._read()
            if info is None:  # released in between: try again
                continue
            if not self._is_stale(info):
                raise SidecarLockedError(
                    f"output side-car is locked by another running compute (host "
                    f"{info.get('host')!r}, pid {info.get('pid')}, since {info.get('started')}). "
                    f"Fix: wait for it to finish, or remove {LOCK_NAME!r} from the side-car if "
                    "that process is gone."
                )
            logger.warning("taking over a stale side-car lock held by pid %s on %s",
                           info.get("pid"), info.get("host"))
            _sync_delete(self.store, LOCK_NAME)
        raise SidecarLockedError(
            "output side-car lock is contended by other computes. Fix: run one compute per output."
        )

    def _payload(self, started: str) -> bytes:
        import time

        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "started": started, "heartbeat": time.time()}).encode()

    def _write(self, started: str | None = None) -> None:
        prev = self._read() or {}
        _sync_set(self.store, LOCK_NAME, self._payload(started or prev.get("started", _now())))

    def heartbeat(self) -> None:
        """Refresh the heartbeat (cheap; called as blocks complete)."""
        self._write()

    def release(self) -> None:
        """Remove the lock if we still own it."""
        info = self._read()
        if info is not None and info.get("token") == self.token:
            _sync_delete(self.store, LOCK_NAME)


def _sync_get(store: Any, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _sync_set(store: Any, key: str, value: bytes) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(value)))


def _sync_set_if_absent(store: Any, key: str, value: bytes) -> bool:
    """Create ``key`` only if absent (atomic where the store supports it); True if created."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = default_buffer_prototype().buffer.from_bytes(value)
    try:
        sync(store.set_if_not_exists(key, buf))
    except (NotImplementedError, AttributeError):  # a store without conditional writes
        if _sync_get(store, key) is not None:
            return False
        _sync_set(store, key, value)
    got = _sync_get(store, key)
    return got == value


def _list_keys(store: Any) -> list[str]:
    from zarr.core.sync import sync

    async def collect() -> list[str]:
        return [k async for k in store.list()]

    try:
        return sync(collect())
    except FileNotFoundError:
        return []


def foreign_keys(store: Any) -> list[str]:
    """Keys in ``store`` other than our lock and write probe (an empty list for a new output)."""
    return [k for k in _list_keys(store) if k not in (LOCK_NAME, ".patchsieve-write-probe")]


def clear_store(store: Any) -> None:
    """Delete every key of a side-car store except the lock (used to (re)create a side-car)."""
    for key in foreign_keys(store):
        _sync_delete(store, key)


def _sync_delete(store: Any, key: str) -> None:
    from zarr.core.sync import sync

    sync(store.delete(key))


# ------------------------------------------------------------------------------------- reader
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

    # ---- geometry
    @property
    def source(self) -> str:
        return str(self.attrs["source"]["url"])

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

    @property
    def geometry(self) -> dict[str, Any]:
        return dict(self.attrs["geometry"])

    @property
    def sample_dims(self) -> tuple[str, ...]:
        return tuple(self.geometry["sample_dims"])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.geometry["sample_shape"])

    @property
    def n_samples(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) if self.sample_shape else 1

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        return tuple(self.geometry["spatial_dims"])

    @property
    def patch_size(self) -> dict[str, int]:
        return {d: int(v) for d, v in self.geometry["patch_size"].items()}

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.geometry["grid_shape"])

    @property
    def ref_channel(self) -> int:
        return int(self.geometry.get("ref_channel", 0))

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
                    f"{_safe_msg(err)}). Fix: recompute it with `patchsieve compute ... "
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
        return self._per_sample(f"decisions/{name}/filter_out").astype(bool)

    def weights(self, name: str) -> np.ndarray:
        """Per-region sampling weight (1 kept, ``filtered_patch_prob`` background), float64."""
        self._check_filter(name)
        w = self._per_sample(f"decisions/{name}/weight").astype(np.float64)
        return w

    def sample_totals(self, name: str) -> dict[str, np.ndarray]:
        """Per-sample totals the sampler needs: n_regions, n_background, weight_sum, n_patches_per_epoch."""
        self._check_filter(name)
        out = {}
        for key in ("n_regions", "n_background", "weight_sum", "n_patches_per_epoch"):
            out[key] = self._flat(f"decisions/{name}/{key}").reshape(self.n_samples)
        return out

    @property
    def stat_names(self) -> list[str]:
        return list(self.attrs.get("stats", []))

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Region statistics, each (n_samples, *grid_shape) float64."""
        return {s: self._per_sample(f"stats/{s}") for s in self.stat_names}

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


def _require_writable(path: str, storage_options: Mapping[str, Any] | None) -> None:
    """Raise StorageError when ``path`` cannot be written (probe write + delete).

    A local folder created only for the probe is removed again, so a refused run leaves nothing.
    """
    local = None if is_remote(path) else os.path.abspath(_local_path(path))
    created = [] if local is None else _missing_parents(local)
    store = open_store(path, storage_options=storage_options, read_only=False)
    key = ".patchsieve-write-probe"
    try:
        _sync_set(store, key, b"probe")
        _sync_delete(store, key)
    except Exception as err:  # noqa: BLE001 - any backend error means not writable
        raise StorageError(
            f"output location {path!r} is not writable ({type(err).__name__}: {_safe_msg(err)}). "
            "Fix: pass a writable --output / output= location."
        ) from err
    finally:
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                break


def _missing_parents(path: str) -> list[str]:
    """Folders of ``path`` (deepest first) that do not exist yet."""
    out = []
    while path and not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def _safe_msg(err: BaseException) -> str:
    """First line of an error message, capped (never includes storage options)."""
    return str(err).splitlines()[0][:200] if str(err) else ""


def sample_blocks(shape: Sequence[int], chunks: Sequence[int]) -> list[tuple[slice, ...]]:
    """Chunk-aligned block slices covering ``shape`` (C order)."""
    import itertools

    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]
    return [tuple(slice(i, min(i + c, n)) for i, c, n in zip(idx, chunks, shape))
            for idx in itertools.product(*ranges)]
