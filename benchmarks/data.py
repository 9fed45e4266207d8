"""Shared benchmark data cache: generate once, reuse.

Datasets (``SPECS``; sizes are uncompressed):

==============  ====================  ========  =====  ===========================================
name            shape                 dtype     axes   notes
==============  ====================  ========  =====  ===========================================
``ref2d``       79x1024x1024          float32   syx    the CAREamics reference stack, 331 MB;
                                                       OME-Zarr chunks (1,512,512) + ``.npy``
``vol3d``       2x64x512x512          uint16    czyx   two channels, ref channel 1 denser, 67 MB;
                                                       OME-Zarr chunks (1,32,256,256) + ``.npy``
``large-2g``    64x4096x4096          uint16    zyx    2 GiB, OME-Zarr only (RSS-vs-size claims)
``large-4g``    128x4096x4096         uint16    zyx    4 GiB, the >= 4 GB filter-pass volume
``large-16g``   512x4096x4096         uint16    zyx    16 GiB (RSS-vs-size claims)
``large-ram``   960x4096x4096         uint16    zyx    30 GiB, larger than a 24 GiB machine's RAM
==============  ====================  ========  =====  ===========================================

OME-Zarr is written with zarr 3 (NGFF 0.5, one level ``s0``, the zarr default codec: zstd) and
``ome_zarr.writer.write_multiscales_metadata``; the sample axis ``s`` is a custom-type axis.
Large volumes are generated chunk by chunk (bounded memory, deterministic per chunk, threads).
The 2D stack is bit-identical to ``hagen_like_2d.npy`` from ``shared/careamics_reference/
make_data.py`` (same generator, rng seed 0). The generators are those of :mod:`patchsieve.demo`
(``reference_slices``, ``two_channel_volume``, ``BlobField``); this module only caches.

Cache: ``.bench-cache/`` in the repository root (``PATCHSIEVE_BENCH_CACHE`` overrides). Each
dataset is built in a temporary folder and renamed into place with a ``stamp.json`` holding the
generator version, so an interrupted build is never reused. Free disk is checked first.

CLI::

    python benchmarks/data.py list                 # what is cached, sizes, free disk
    python benchmarks/data.py make ref2d vol3d   # generate (no-op when cached)
    python benchmarks/data.py make large-ram --workers 1   # (alias: ensure) fewer threads
    python benchmarks/data.py delete large-16g     # or: delete --all

The out-of-core benchmarks (``make bench-large``) use ``large-ram``: :func:`disk_problem`
checks the free disk before generating it and :func:`offer_delete` prints the exact delete
command afterwards (and asks, when stdin is a terminal).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("patchsieve.benchmarks.data")

GENERATOR_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".bench-cache"
#: Expected zstd compression of the generated uint16 volumes (measured ~1.9x); used only to
#: estimate the disk space needed, with a margin.
EST_COMPRESSION = 1.5
DISK_MARGIN_BYTES = 1 << 30

# ----------------------------------------------------------------------------- generators
# The generators live in the package (patchsieve.demo, shared with the demo data):
# ``reference_slices`` is bit for bit shared/careamics_reference/make_data.py's hagen_like_2d
# generator, ``two_channel_volume`` the 3D two-channel volume, ``BlobField``/``blob_chunk`` the
# large volumes generated chunk by chunk.
from patchsieve.demo import (  # noqa: E402
    BlobField,
    blob_chunk,
    reference_slices,
    two_channel_volume,
)


# ----------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class Spec:
    """What one cached dataset is.

    Attributes
    ----------
    name : str
        Cache folder name.
    kind : {"ref2d", "vol3d", "large"}
        Generator.
    shape, chunks : tuple of int
        Array and Zarr chunk shapes.
    dtype : str
        ``"float32"`` or ``"uint16"``.
    axes : str
        Lower-case dims (``"syx"``, ``"czyx"``, ``"zyx"``).
    npy : bool
        Also write ``data.npy`` (in-memory inputs for CAREamics and peers).
    seed : int
        Generator seed.
    ref_channel : int or None
        Reference channel of multichannel data.
    description : str
        One line for tables.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    axes: str
    npy: bool
    seed: int = 0
    ref_channel: int | None = None
    description: str = ""

    @property
    def nbytes(self) -> int:
        """Uncompressed size in bytes."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def resized(self, name: str, shape: tuple[int, ...],
                chunks: tuple[int, ...] | None = None) -> Spec:
        """The same generator at another size (e.g. tiny, for tests)."""
        return dataclasses.replace(self, name=name, shape=tuple(shape),
                                   chunks=tuple(chunks or self.chunks))

    def stamp(self) -> dict[str, Any]:
        """Content of ``stamp.json`` (a cached dataset is reused only when it matches)."""
        d = dataclasses.asdict(self)
        d.update(shape=list(self.shape), chunks=list(self.chunks),
                 generator_version=GENERATOR_VERSION)
        d.pop("description")
        return d


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("ref2d", "ref2d", (79, 1024, 1024), (1, 512, 512), "float32", "syx", True, 0,
         None, "CAREamics reference 2D stack 79x1024x1024 float32 (make_data.py, seed 0)"),
    Spec("vol3d", "vol3d", (2, 64, 512, 512), (1, 32, 256, 256), "uint16", "czyx", True, 1, 1,
         "3D two-channel 2x64x512x512 uint16, ref channel 1 denser"),
    Spec("large-2g", "large", (64, 4096, 4096), (32, 256, 256), "uint16", "zyx", False, 2,
         None, "2 GiB uint16 ZYX, zstd"),
    Spec("large-4g", "large", (128, 4096, 4096), (32, 256, 256), "uint16", "zyx", False, 4,
         None, "4 GiB uint16 ZYX, zstd"),
    Spec("large-16g", "large", (512, 4096, 4096), (32, 256, 256), "uint16", "zyx", False, 16,
         None, "16 GiB uint16 ZYX, zstd"),
    Spec("large-ram", "large", (960, 4096, 4096), (32, 256, 256), "uint16", "zyx", False, 30,
         None, "30 GiB uint16 ZYX, zstd: larger than a 24 GiB machine's RAM"),
)}


class InsufficientDiskError(OSError):
    """Not enough free disk for a dataset; the message says how much is needed and where."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A generated, stamped dataset in the cache.

    Attributes
    ----------
    spec : Spec
    root : Path
        ``<cache>/<name>``.
    """

    spec: Spec
    root: Path

    @property
    def zarr_path(self) -> Path:
        """The OME-Zarr root (``data.ome.zarr``)."""
        return self.root / "data.ome.zarr"

    @property
    def array_path(self) -> Path:
        """The full-resolution array inside the OME-Zarr (level ``s0``)."""
        return self.zarr_path / "s0"

    @property
    def npy_path(self) -> Path | None:
        """``data.npy`` when the spec has one."""
        return self.root / "data.npy" if self.spec.npy else None

    def open_zarr(self):
        """The level-0 ``zarr.Array`` (read-only)."""
        import zarr

        return zarr.open_array(str(self.array_path), mode="r")

    def load_npy(self, mmap: bool = True) -> np.ndarray:
        """The ``.npy`` copy (memory-mapped by default)."""
        if self.npy_path is None:
            raise FileNotFoundError(f"dataset {self.spec.name!r} has no .npy copy (npy=False)")
        return np.load(self.npy_path, mmap_mode="r" if mmap else None)

    def derived_npy(self, slices: int | None = None, dtype: str | None = None) -> Path:
        """A cached ``.npy`` of the first ``slices`` samples, optionally cast (rounded, clipped).

        E.g. ``derived_npy(8)`` for CAREamics on 8 Hagen-like slices and
        ``derived_npy(8, "uint16")`` for the same slices rounded to integers (Shannon on
        integer data). Written once next to the dataset (``derived/``), atomically.
        """
        src = self.load_npy()
        n = src.shape[0] if slices is None else int(slices)
        if not 0 < n <= src.shape[0]:
            raise ValueError(f"slices={slices!r} must be in 1..{src.shape[0]}")
        dt = np.dtype(dtype or src.dtype)
        out = self.root / "derived" / f"first{n}_{dt.name}.npy"
        if out.exists():
            return out
        out.parent.mkdir(exist_ok=True)
        part = np.asarray(src[:n])
        if dt.kind in "ui" and part.dtype.kind == "f":
            info = np.iinfo(dt)
            part = np.clip(np.rint(part), info.min, info.max)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, part.astype(dt))
        tmp.replace(out)
        return out

    def info(self) -> dict[str, Any]:
        """JSON-friendly description for results files."""
        return {"name": self.spec.name, "shape": list(self.spec.shape),
                "chunks": list(self.spec.chunks), "dtype": self.spec.dtype,
                "axes": self.spec.axes, "nbytes": self.spec.nbytes,
                "disk_bytes": dir_size(self.zarr_path), "ref_channel": self.spec.ref_channel,
                "codec": "zarr 3 default (zstd)", "description": self.spec.description}


# ----------------------------------------------------------------------------- cache
def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache``, else ``$PATCHSIEVE_BENCH_CACHE``, else ``.bench-cache``."""
    return Path(cache or os.environ.get("PATCHSIEVE_BENCH_CACHE") or DEFAULT_CACHE)


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (0 when absent)."""
    total = 0
    for r, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(r, f))
            except OSError:
                pass
    return total


def disk_needed(spec: Spec) -> int:
    """Estimated bytes to generate ``spec`` (compressed Zarr + optional .npy + margin)."""
    return int(spec.nbytes / EST_COMPRESSION) + (spec.nbytes if spec.npy else 0) + \
        DISK_MARGIN_BYTES


def check_disk(spec: Spec, cache: str | os.PathLike | None = None) -> None:
    """Raise :class:`InsufficientDiskError` when the cache's disk is too small for ``spec``."""
    root = cache_dir(cache)
    probe = root if root.exists() else next(p for p in root.parents if p.exists())
    free = shutil.disk_usage(probe).free
    need = disk_needed(spec)
    if free < need:
        raise InsufficientDiskError(
            f"dataset {spec.name!r} needs ~{need / 1e9:.1f} GB but only {free / 1e9:.1f} GB are "
            f"free under {probe}; free disk, delete cached datasets (python benchmarks/data.py "
            f"delete --all) or point PATCHSIEVE_BENCH_CACHE at a larger disk")


def disk_problem(spec: str | Spec, cache: str | os.PathLike | None = None) -> str | None:
    """Why ``spec`` cannot be generated here (too little free disk), or None.

    None as well when the dataset is already cached (nothing to write).
    """
    spec = _resolve(spec)
    if cached(spec, cache) is not None:
        return None
    try:
        check_disk(spec, cache)
    except InsufficientDiskError as exc:
        return str(exc)
    return None


def delete_command(name: str, cache: str | os.PathLike | None = None) -> str:
    """The exact shell command that deletes dataset ``name`` from ``cache``."""
    cmd = f"python benchmarks/data.py delete {name}"
    if cache is not None and Path(cache).resolve() != cache_dir(None).resolve():
        cmd = f"python benchmarks/data.py --cache {cache} delete {name}"
    return cmd


def offer_delete(names: list[str], cache: str | os.PathLike | None = None, *,
                 interactive: bool | None = None, ask: Any = input,
                 out: Any = print) -> list[str]:
    """Say how much disk the cached ``names`` use and how to delete them; ask on a terminal.

    Parameters
    ----------
    names : list of str
        Dataset names (e.g. ``["large-ram"]``); those not cached are ignored.
    cache : path, optional
        Cache folder (see :func:`cache_dir`).
    interactive : bool, optional
        Prompt for deletion; default: only when stdin is a TTY (never in CI or under nohup).
    ask, out : callable
        ``input``/``print`` replacements (tests).

    Returns
    -------
    list of str
        What was deleted (empty unless the user answered yes).
    """
    if interactive is None:
        try:
            interactive = sys.stdin is not None and sys.stdin.isatty()
        except (ValueError, OSError):
            interactive = False
    removed: list[str] = []
    for name in names:
        root = cache_dir(cache) / name
        if not root.is_dir():
            continue
        size = dir_size(root)
        cmd = delete_command(name, cache)
        out(f"dataset {name!r} keeps {size / 1e9:.1f} GB of disk at {root} (reused by the next "
            f"run); delete it with: {cmd}")
        if not interactive:
            continue
        try:
            answer = ask(f"Delete {name} now ({size / 1e9:.1f} GB)? [y/N] ")
        except EOFError:
            answer = ""
        if str(answer).strip().lower() in ("y", "yes"):
            removed += delete(name, cache)
            out(f"removed: {', '.join(removed) or 'nothing'}")
    return removed


def _resolve(spec: str | Spec) -> Spec:
    if isinstance(spec, Spec):
        return spec
    try:
        return SPECS[spec]
    except KeyError:
        raise KeyError(f"dataset {spec!r} is unknown; choose one of {sorted(SPECS)}") from None


def cached(spec: str | Spec, cache: str | os.PathLike | None = None) -> Dataset | None:
    """The dataset when it is in the cache with a matching stamp, else None."""
    spec = _resolve(spec)
    root = cache_dir(cache) / spec.name
    try:
        stamp = json.loads((root / "stamp.json").read_text())
    except (OSError, ValueError):
        return None
    return Dataset(spec, root) if stamp == spec.stamp() else None


def ensure(spec: str | Spec, cache: str | os.PathLike | None = None, *,
           workers: int | None = None) -> Dataset:
    """Return the cached dataset, generating it first when missing or stale.

    Parameters
    ----------
    spec : str or Spec
        A name from :data:`SPECS` or a :class:`Spec` (e.g. ``SPECS["large-2g"].resized(...)``).
    cache : path, optional
        Cache folder (see :func:`cache_dir`).
    workers : int, optional
        Generator threads for large volumes (default: CPU count).

    Raises
    ------
    InsufficientDiskError
        When the disk is too small (checked before writing anything).
    """
    spec = _resolve(spec)
    hit = cached(spec, cache)
    if hit is not None:
        return hit
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root / f".{spec.name}.lock"):
        hit = cached(spec, root)  # another process may have built it while we waited
        if hit is not None:
            return hit
        return _build(spec, root, workers or os.cpu_count() or 1)


@contextlib.contextmanager
def _generation_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (POSIX ``flock``; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(spec: Spec, root: Path, workers: int) -> Dataset:
    final = root / spec.name
    if final.exists():
        log.info("removing stale %s", final)
        shutil.rmtree(final)
    check_disk(spec, root)
    tmp = root / f".{spec.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        _GENERATORS[spec.kind](spec, tmp, workers)
        (tmp / "stamp.json").write_text(json.dumps(spec.stamp(), indent=1))
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("generated %s in %.1f s", spec.name, time.perf_counter() - t0)
    return Dataset(spec, final)


def delete(name: str | None = None, cache: str | os.PathLike | None = None) -> list[str]:
    """Delete one cached dataset (or all when ``name`` is None); return what was removed."""
    root = cache_dir(cache)
    if not root.exists():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and (name is None or p.name == name or p.name.startswith(f".{name}.tmp")):
            shutil.rmtree(p)
            removed.append(p.name)
    return removed


def list_cache(cache: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows ``{name, cached, nbytes, disk_bytes}`` for every known spec."""
    rows = []
    for name, spec in SPECS.items():
        ds = cached(spec, cache)
        rows.append({"name": name, "cached": ds is not None, "nbytes": spec.nbytes,
                     "disk_bytes": dir_size(ds.root) if ds else 0,
                     "description": spec.description})
    return rows


# ----------------------------------------------------------------------------- writers
def _create_ome_zarr(path: Path, spec: Spec):
    """An NGFF 0.5 group with one level ``s0`` (zarr default codec) and its metadata."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = root.create_array("s0", shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype,
                            dimension_names=tuple(spec.axes), fill_value=0,
                            config={"write_empty_chunks": True})
    types = {"s": None, "t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    axes = [{"name": a, **({"type": types[a]} if types[a] else {})} for a in spec.axes]
    write_multiscales_metadata(
        root, datasets=[{"path": "s0", "coordinateTransformations":
                         [{"type": "scale", "scale": [1.0] * len(spec.shape)}]}],
        fmt=FormatV05(), axes=axes, name=spec.name)
    return arr


def _gen_ref2d(spec: Spec, out: Path, workers: int) -> None:
    n, *yx = spec.shape
    arr = _create_ome_zarr(out / "data.ome.zarr", spec)
    npy = np.lib.format.open_memmap(out / "data.npy", mode="w+", dtype=np.float32,
                                    shape=spec.shape)
    for i, sl in enumerate(reference_slices(n, tuple(yx), spec.seed)):
        npy[i] = sl
        arr[i] = sl
    npy.flush()
    del npy


def _gen_vol3d(spec: Spec, out: Path, workers: int) -> None:
    vol = two_channel_volume(spec.shape, spec.seed)
    np.save(out / "data.npy", vol)
    arr = _create_ome_zarr(out / "data.ome.zarr", spec)
    arr[...] = vol


def _chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple]:
    grid = [range(math.ceil(s / c)) for s, c in zip(shape, chunks, strict=False)]
    for idx in itertools.product(*grid):
        start = tuple(i * c for i, c in zip(idx, chunks, strict=False))
        stop = tuple(min(a + c, s) for a, c, s in zip(start, chunks, shape, strict=False))
        yield start, stop


def _gen_large(spec: Spec, out: Path, workers: int) -> None:
    arr = _create_ome_zarr(out / "data.ome.zarr", spec)
    field = BlobField(spec.shape, spec.seed)
    nchunks = math.prod(math.ceil(s / c) for s, c in zip(spec.shape, spec.chunks, strict=False))
    t0 = time.perf_counter()

    def one(item: tuple[int, tuple]) -> None:
        i, (start, stop) = item
        block = blob_chunk(field, spec.seed, i, start, stop)
        arr[tuple(slice(a, b) for a, b in zip(start, stop, strict=False))] = block

    items = enumerate(_chunk_slices(spec.shape, spec.chunks))
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: set[cf.Future] = set()
        done_n = 0
        for item in items:  # bounded number of chunks in flight -> bounded memory
            pending.add(pool.submit(one, item))
            if len(pending) >= 2 * workers:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    f.result()
                done_n += len(done)
                if done_n % 256 < len(done):
                    log.info("%s: %d/%d chunks, %.0f s", spec.name, done_n, nchunks,
                             time.perf_counter() - t0)
        for f in cf.as_completed(pending):
            f.result()


_GENERATORS = {"ref2d": _gen_ref2d, "vol3d": _gen_vol3d, "large": _gen_large}


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/data.py {list,make|ensure,delete} ...``."""
    ap = argparse.ArgumentParser(description="patchsieve benchmark data cache")
    ap.add_argument("--cache", help="cache folder (default .bench-cache or "
                                    "$PATCHSIEVE_BENCH_CACHE)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="show datasets, cached or not, and free disk")
    mk = sub.add_parser("make", aliases=["ensure"], help="generate datasets (no-op when cached)")
    mk.add_argument("names", nargs="+", choices=sorted(SPECS))
    mk.add_argument("--workers", type=int, default=None,
                    help="generator threads for large volumes (default: CPU count)")
    dl = sub.add_parser("delete", help="delete cached datasets")
    dl.add_argument("names", nargs="*")
    dl.add_argument("--all", action="store_true", help="delete the whole cache content")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = cache_dir(args.cache)
    if args.cmd == "list":
        for r in list_cache(root):
            print(f"{r['name']:<10} {'cached' if r['cached'] else '-':<7} "
                  f"{r['nbytes'] / 2**30:7.2f} GiB raw  {r['disk_bytes'] / 2**30:7.2f} GiB disk"
                  f"  {r['description']}")
        probe = root if root.exists() else root.parent
        print(f"cache: {root}  free disk: {shutil.disk_usage(probe).free / 1e9:.1f} GB")
    elif args.cmd in ("make", "ensure"):
        for name in args.names:
            t0 = time.perf_counter()
            try:
                ds = ensure(name, root, workers=args.workers)
            except InsufficientDiskError as exc:
                print(f"SKIP {name}: {exc}")
                continue
            print(f"{name}: {ds.root} ({time.perf_counter() - t0:.1f} s)")
    else:
        if not args.all and not args.names:
            ap.error("delete needs dataset names or --all")
        names = [None] if args.all else args.names
        for name in names:
            print("removed:", ", ".join(delete(name, root)) or "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
