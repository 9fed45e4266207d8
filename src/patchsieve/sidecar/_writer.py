"""Writing a side-car: :class:`SidecarWriter` (lock, create or resume, arrays, completion) and
:class:`BlockLog` (block results buffered in memory, flushed with their resume markers).

A writer never leaves a side-car that looks complete but is not: the root ``complete`` flag is
cleared first and set last (:meth:`SidecarWriter.finalize`), block markers are written only
after the values they vouch for, and any storage failure becomes one :class:`StorageError`
saying that the side-car is incomplete and how to resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from patchsieve._version import __version__
from patchsieve.errors import PatchsieveError, SidecarMismatchError, StorageError
from patchsieve.grid import VolumeGeometry, chunk_pieces
from patchsieve.sidecar._decisions import update_decisions
from patchsieve.sidecar._format import (
    BLOCK_GRID,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    WRITE_PROBE,
    config_attrs,
    decision_key,
    jsonable,
    now,
)
from patchsieve.sidecar._lock import SidecarLock
from patchsieve.volume import delete_key, list_keys, open_store, safe_message

logger = logging.getLogger(__name__)

#: target number of values per chunk of the side-car's arrays
SIDECAR_CHUNK_ELEMENTS = 1 << 20
#: a block log flushes after this many blocks or seconds
FLUSH_EVERY_BLOCKS = 512
FLUSH_EVERY_S = 2.0
#: side-car chunks a block log keeps in memory between flushes (bytes, least recently used out)
OPEN_CHUNK_BYTES = 64 * 2**20


class SidecarWriter:
    """Writes one side-car under its lock.

    ``with SidecarWriter(path) as w:`` takes the write lock (:class:`SidecarLockedError` when
    another live process holds it) and releases it on exit; inside, :meth:`begin` creates the
    side-car or validates the one there for resuming, :meth:`array` and :meth:`block_log` write
    results, :meth:`finalize` derives the decisions and marks it complete. :meth:`change_filter`
    rewrites one filter's config and decisions of a complete side-car (a threshold change).

    Parameters
    ----------
    path : str
        Local path or fsspec URL of the side-car.
    storage_options : mapping, optional
        fsspec options of the output; never stored.
    """

    def __init__(self, path: str, storage_options: Mapping[str, Any] | None = None):
        self.path = str(path)
        self.store = open_store(self.path, storage_options=storage_options, read_only=False)
        self.lock = SidecarLock(self.store)
        self._group: zarr.Group | None = None

    # ---- lock
    def __enter__(self) -> SidecarWriter:
        with self.writing():
            self.lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(OSError):
            self.lock.release()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turn a storage failure while writing into one clear :class:`StorageError`."""
        try:
            yield
        except PatchsieveError:
            raise
        except OSError as err:
            raise StorageError(
                f"writing the side-car {self.path!r} failed ({type(err).__name__}: "
                f"{safe_message(err)}); it is left incomplete and readers refuse it. Fix: free "
                "space / check permissions of the output, then rerun the same command (it "
                "resumes).") from err

    # ---- group and attrs
    @property
    def group(self) -> zarr.Group:
        """The side-car's root group (after :meth:`begin` or :meth:`open`)."""
        if self._group is None:
            raise RuntimeError("SidecarWriter: call begin() or open() first")
        return self._group

    def open(self, mode: str = "r+") -> zarr.Group:
        """Open the root group (``"r+"``: it must exist; ``"a"``: created when missing)."""
        self._group = zarr.open_group(self.store, mode=mode, zarr_format=3)
        return self._group

    def meta(self) -> dict[str, Any]:
        """The root ``attrs["patchsieve"]``."""
        return dict(self.group.attrs.asdict().get("patchsieve", {}))

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        """Replace the root ``attrs["patchsieve"]`` (stamping ``updated``)."""
        m = dict(meta)
        m["updated"] = now()
        self.group.attrs.update({"patchsieve": m})

    def foreign_keys(self) -> list[str]:
        """Keys other than the lock and the write probe (empty for a new output)."""
        return [k for k in list_keys(self.store) if k not in (LOCK_NAME, WRITE_PROBE)]

    def clear(self) -> None:
        """Delete every key except the lock (to (re)create the side-car)."""
        for key in self.foreign_keys():
            delete_key(self.store, key)

    # ---- create or resume
    def begin(self, volume: Any, geometry: VolumeGeometry, configs: Mapping[str, Any],
              stats: Sequence[str], fingerprint: Mapping[str, str], *, seed: int = 0,
              overwrite: bool = False) -> dict[str, Any]:
        """Create the side-car, or validate the one there for resuming; return its attrs.

        ``fingerprint`` holds ``source`` and ``params`` hashes; a side-car made for another
        source, other parameters or another format version is refused
        (:class:`SidecarMismatchError`) unless ``overwrite``. Marks it incomplete.
        """
        existing = self._existing(fingerprint, overwrite)
        if not existing:
            self.clear()  # keeps our lock
            self.open("a")
            existing = self._fresh_meta(volume, geometry, fingerprint, seed)
        elif existing.get("block_grid") != BLOCK_GRID:
            # begun by a version with other blocks: its markers mean other blocks
            if "progress" in self.group:
                logger.info("side-car %s was begun with other blocks; its incomplete parts are "
                            "computed again", self.path)
                del self.group["progress"]
        existing["block_grid"] = BLOCK_GRID
        existing["filters"] = {**existing.get("filters", {}),
                               **{n: config_attrs(c) for n, c in configs.items()}}
        existing["stats"] = sorted(set(existing.get("stats", [])) | set(stats))
        existing["complete"] = False
        self.set_meta(existing)
        return existing

    def _existing(self, fingerprint: Mapping[str, str], overwrite: bool) -> dict[str, Any]:
        foreign = self.foreign_keys()
        try:
            self.open("r+")
            existing = self.meta()
        except (FileNotFoundError, KeyError, ValueError):
            existing = {}
        if existing.get("format") != FORMAT_NAME and foreign:
            # something that is not (yet) a side-car lives there: never delete it silently
            if not overwrite:
                raise SidecarMismatchError(
                    f"output {self.path!r} exists and is not a patchsieve side-car (it holds "
                    f"{sorted(foreign)[:3]}...). Fix: choose another output, or pass "
                    "overwrite=True / --overwrite to replace it.")
            return {}
        if not existing:
            return {}
        problems = []
        if int(existing.get("format_version", -1)) != FORMAT_VERSION:
            problems.append(f"format_version {existing.get('format_version')} != {FORMAT_VERSION}")
        fp = existing.get("fingerprint", {})
        if fp.get("source") != fingerprint["source"]:
            problems.append("the source changed (fingerprint mismatch) or is another source")
        if fp.get("params") != fingerprint["params"]:
            problems.append("other parameters (patch size, ref_channel, border, level)")
        if problems and not overwrite:
            raise SidecarMismatchError(
                f"side-car {self.path!r} was made for {'; '.join(problems)}. Fix: pass "
                "overwrite=True / --overwrite to recompute it, or choose another output.")
        return {} if problems else existing

    @staticmethod
    def _fresh_meta(volume: Any, geometry: VolumeGeometry, fingerprint: Mapping[str, str],
                    seed: int) -> dict[str, Any]:
        attrs = volume.attrs
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "patchsieve_version": __version__,
            "created": now(),
            "source": {
                "url": str(attrs.get("source", "<numpy>")),
                "array_path": str(attrs.get("array_path", "")),
                "level": int(attrs.get("level", 0)),
                "format": str(attrs.get("format", "")),
                "dims": list(volume.dims),
                "shape": [int(n) for n in volume.shape],
                "chunks": [int(c[0]) for c in volume.data.chunks],
                "dtype": str(volume.dtype),
                "scale": jsonable(attrs.get("scale", {})),
                "translation": jsonable(attrs.get("translation", {})),
            },
            "fingerprint": dict(fingerprint),
            "geometry": geometry.to_attrs(),
            "filters": {},
            "stats": [],
            "status": {},
            "complete": False,
            "seed": int(seed),
        }

    # ---- arrays
    def array(self, key: str, shape: Sequence[int], chunks: Sequence[int], dtype: str,
              fill_value: Any = 0, *, grow: bool = True) -> zarr.Array:
        """The array ``key``, created (or recreated) with chunks that are whole multiples of
        ``chunks`` holding up to :data:`SIDECAR_CHUNK_ELEMENTS` values (``grow=False``:
        ``chunks`` as given, e.g. aligned to the filter pass's tiles): region- and cell-level
        arrays are small, and one object per compute block would cost more to write than the
        block costs to compute. An existing array of the right shape and dtype is kept whatever
        its chunks (a side-car begun by an older version resumes with its values intact)."""
        group = self.group
        try:
            arr = group[key]
            if tuple(arr.shape) == tuple(shape) and arr.dtype == np.dtype(dtype):
                return arr
        except KeyError:
            pass
        return group.create_array(
            key, shape=tuple(int(s) for s in shape),
            chunks=coarse_chunks(shape, chunks) if grow else
            tuple(max(1, min(int(c), max(1, int(n)))) for c, n in zip(chunks, shape)),
            dtype=dtype, fill_value=fill_value, overwrite=True,
            config={"write_empty_chunks": True},
        )

    def block_log(self, arrays: Mapping[str, zarr.Array], marker: zarr.Array,
                  prefix: Mapping[str, int] | None = None) -> BlockLog:
        """A :class:`BlockLog` writing ``arrays`` and their block markers ``marker``."""
        return BlockLog(arrays, marker, self.lock, prefix)

    # ---- decisions and completion
    def update_decisions(self, configs: Mapping[str, Any],
                         meta: dict[str, Any]) -> dict[str, Any]:
        """(Re)compute decisions, weights, totals and normalisation from the stored statistics."""
        geometry = VolumeGeometry.from_attrs(meta["geometry"], meta.get("source"))
        return update_decisions(self, geometry, configs, meta)

    def finalize(self, volume: Any, configs: Mapping[str, Any], labels: bool) -> None:
        """Derive decisions (and label images), then set the ``complete`` flag last."""
        meta = self.update_decisions(configs, self.meta())
        if labels:
            from patchsieve.sidecar._labels import write_labels

            geometry = VolumeGeometry.from_attrs(meta["geometry"], meta.get("source"))
            for name in configs:
                write_labels(self.group, name, volume, geometry,
                             self.group[decision_key(name, "filter_out")])
            meta["status"]["labels"] = "complete"
            meta["labels"] = sorted(configs)
        meta["complete"] = True
        self.set_meta(meta)

    def change_filter(self, name: str, config: Any) -> None:
        """Replace filter ``name``'s config and re-derive its decisions (no volume read).

        The side-car is marked incomplete while it is rewritten; readers refuse it meanwhile.
        A label image of the filter (``labels/<name>``, written with ``labels=True``) is
        rewritten from the new decisions before the side-car is marked complete again.
        """
        from patchsieve.config import parse_filter_config

        with self.writing():
            self.open("r+")
            meta = self.meta()
            meta["filters"] = {**meta["filters"], name: config_attrs(config)}
            configs = {n: parse_filter_config(c) for n, c in meta["filters"].items()}
            meta["complete"] = False
            self.set_meta(meta)
            meta = self.update_decisions(configs, meta)
            if name in meta.get("labels", []):
                # the label image follows the decisions, never left stale
                from patchsieve.sidecar._labels import relabel

                relabel(self.group, name, meta)
            meta["complete"] = True
            self.set_meta(meta)


class BlockLog:
    """Block results written to the side-car chunk by chunk, with their resume markers.

    Results arrive block by block; writing each block with its own zarr call costs more than
    computing it. The log keeps the side-car chunks the recent blocks fell into ("open" chunks,
    loaded from disk when first touched, so a resumed run keeps what is there), writes the
    chunks touched since the last flush whole, then sets the blocks' markers and writes only the
    marker chunks that changed. Memory is bounded by :data:`OPEN_CHUNK_BYTES` (plus the marker
    array: one byte per block), not by the size of the arrays; a killed run leaves markers only
    for blocks whose values are on disk.

    Parameters
    ----------
    arrays : mapping of str to zarr.Array
        The arrays a job fills.
    marker : zarr.Array
        uint8 markers, one per block (1 = written).
    lock : SidecarLock
        Heartbeat on each flush.
    prefix : mapping, optional
        Leading axes of an array not addressed by the block slices (e.g. channels).
    """

    def __init__(self, arrays: Mapping[str, zarr.Array], marker: zarr.Array, lock: SidecarLock,
                 prefix: Mapping[str, int] | None = None):
        self.arrays = dict(arrays)
        #: leading axes of an array not addressed by the block slices (e.g. channels)
        self.prefix = {k: int((prefix or {}).get(k, 0)) for k in self.arrays}
        self.marker, self.lock = marker, lock
        self.done = np.asarray(marker[...], dtype=np.uint8)
        self.open: OrderedDict[tuple[str, tuple[int, ...]], np.ndarray] = OrderedDict()
        self.dirty: set[tuple[str, tuple[int, ...]]] = set()
        self.open_bytes = 0
        self.pending: list[tuple[int, ...]] = []
        self.last = time.monotonic()
        self.flushes = 0

    def todo(self) -> list[tuple[int, ...]]:
        """Indices of the blocks without a marker (a list: for small logs and tests)."""
        return [tuple(int(i) for i in idx) for idx in np.argwhere(self.done == 0)]

    def missing(self) -> np.ndarray:
        """Bool array over the blocks: True where the marker is unset."""
        return self.done == 0

    def _chunk(self, key: str, cidx: tuple[int, ...]) -> np.ndarray:
        buf = self.open.get((key, cidx))
        if buf is None:
            arr = self.arrays[key]
            buf = np.array(arr[_chunk_slices(cidx, arr.chunks, arr.shape)])
            self.open[(key, cidx)] = buf
            self.open_bytes += buf.nbytes
        else:
            self.open.move_to_end((key, cidx))
        return buf

    def put(self, idx: tuple[int, ...], sl: tuple[slice, ...],
            values: Mapping[str, np.ndarray]) -> None:
        """Record block ``idx``'s ``values`` at slices ``sl`` (flushed in batches)."""
        for k, v in values.items():
            arr = self.arrays[k]
            p = self.prefix[k]
            full = (*(slice(0, n) for n in arr.shape[:p]), *sl)
            v = np.asarray(v)
            for cidx, in_chunk, in_block in chunk_pieces(full, arr.chunks):
                self._chunk(k, cidx)[in_chunk] = v[in_block]
                self.dirty.add((k, cidx))
        self.pending.append(idx)
        if (len(self.pending) >= FLUSH_EVERY_BLOCKS or not self.flushes
                or time.monotonic() - self.last >= FLUSH_EVERY_S):
            self.flush()

    def mark(self, idx: tuple[int, ...]) -> None:
        """A block with nothing to write (no region or cell origin in its chunk)."""
        self.pending.append(idx)

    def flush(self) -> None:
        """Write the chunks the pending blocks touched, then their markers."""
        if not self.pending and not self.dirty:
            return
        for key, cidx in sorted(self.dirty):
            arr = self.arrays[key]
            # whole chunks from memory: zarr never reads a chunk back
            arr[_chunk_slices(cidx, arr.chunks, arr.shape)] = self.open[(key, cidx)]
        self.dirty.clear()
        touched = set()
        mchunks = self.marker.chunks
        for idx in self.pending:
            self.done[idx] = 1
            touched.add(tuple(i // c for i, c in zip(idx, mchunks)))
        for cidx in sorted(touched):
            box = _chunk_slices(cidx, mchunks, self.marker.shape)
            self.marker[box] = self.done[box]
        self.pending = []
        while self.open_bytes > OPEN_CHUNK_BYTES and len(self.open) > 1:
            _, old = self.open.popitem(last=False)
            self.open_bytes -= old.nbytes
        self.last = time.monotonic()
        self.flushes += 1
        self.lock.heartbeat()


def _chunk_slices(cidx: Sequence[int], chunks: Sequence[int],
                  shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(cidx, chunks, shape))


def coarse_chunks(shape: Sequence[int], chunks: Sequence[int],
                  target: int = SIDECAR_CHUNK_ELEMENTS) -> tuple[int, ...]:
    """Grow ``chunks`` by whole multiples, last axes first, up to about ``target`` values.

    Examples
    --------
    >>> coarse_chunks((4, 1000, 1000), (1, 8, 8), target=4096)
    (1, 8, 512)
    """
    out = [max(1, min(int(c), int(n) if int(n) > 0 else 1)) for c, n in zip(chunks, shape)]
    for a in reversed(range(len(out))):
        n = max(1, int(shape[a]))
        rest = math.prod(out) // out[a]
        k = max(1, min(math.ceil(n / out[a]), target // max(1, rest * out[a])))
        out[a] = min(out[a] * k, max(n, out[a]))
        if math.prod(out) >= target:
            break
    return tuple(out)


def block_slices(idx: Sequence[int], chunks: Sequence[int],
                 shape: Sequence[int]) -> tuple[slice, ...]:
    """Slices of block ``idx`` of a regular block grid ``chunks`` over ``shape``."""
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, shape))
