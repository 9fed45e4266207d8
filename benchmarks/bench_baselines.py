"""Baselines measured with plain tools (no patchsieve): the floors and ceilings of the suite.

(a) ``dask_read``: read the whole Zarr volume with Dask, summing every chunk (the floor of the
    filter pass), threaded scheduler and a 2-process LocalCluster (peak RSS of client + workers);
(b) ``one_read_per_patch``: random chunk-aligned patches read with plain zarr, one read per
    patch (what a naive sampler does; the dataset must beat it), in one process and through a
    torch DataLoader at num_workers 0 and 2;
(c) ``cut_from_decoded``: patches cut from chunks already decoded in RAM (the RAM ceiling), and
    decode-each-chunk-once-then-cut-its-share (the epoch floor of a chunk-aware sampler).

Other benchmarks import these functions to measure the same baselines in their own run::

    from bench_baselines import dask_read, one_read_per_patch

Run: ``python benchmarks/bench_baselines.py [--quick | --large]``; writes
``benchmarks/results/baselines.json``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402
import data as D  # noqa: E402


# ----------------------------------------------------------------------------- (a) dask read
def dask_read(array_path: str | os.PathLike, scheduler: str = "threads", *, repeat: int = 3,
              client: Any = None) -> dict[str, Any]:
    """Time ``da.from_zarr(path).sum()`` (every chunk decoded once) and its peak tree RSS.

    Parameters
    ----------
    array_path : path
        A Zarr array (e.g. ``Dataset.array_path``).
    scheduler : {"threads", "sync", "distributed"}
        ``"distributed"`` needs ``client``.
    repeat : int
        Timed runs (median reported).
    client : distributed.Client, optional
        Used when ``scheduler == "distributed"`` (one untimed warm-up run first).
    """
    import dask.array as da

    x = da.from_zarr(str(array_path))
    acc = "f8" if np.issubdtype(x.dtype, np.floating) else "u8"
    if scheduler == "distributed":
        if client is None:
            raise ValueError("scheduler='distributed' needs client=; pass a distributed.Client")

        def fn():
            return client.compute(x.sum(dtype=acc)).result()
        first = x[tuple(slice(0, c) for c in x.chunksize)]
        client.compute(first.sum(dtype=acc)).result()  # warm the workers (imports, open)
    else:
        def fn():
            return x.sum(dtype=acc).compute(scheduler=scheduler)
    with H.PeakRSS() as rss:
        t = H.median_time(fn, repeat=repeat)
    return {"scheduler": scheduler, **t.as_dict(), "nbytes": int(x.nbytes),
            "MBps": H.mb_per_s(x.nbytes, t.median_s), "GBps": x.nbytes / t.median_s / 1e9,
            "Mpix_per_s": H.mpix_per_s(x.size, t.median_s), "chunks": list(x.chunksize),
            "n_chunks": int(x.npartitions), **rss.as_dict()}


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1):
    """A quiet LocalCluster + Client on loopback (context managers)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                           processes=True, dashboard_address=None, host="127.0.0.1")
    return cluster, Client(cluster)


# ----------------------------------------------------------------------------- (b) patch reads
def aligned_origins(shape: Sequence[int], patch: Sequence[int], n: int, seed: int = 0,
                    fixed: dict[int, int] | None = None) -> np.ndarray:
    """``n`` random patch origins on the patch grid (chunk-aligned when chunks are multiples).

    Parameters
    ----------
    shape, patch : sequence of int
        Array shape and full-rank patch shape (1 on sample/channel axes).
    fixed : dict, optional
        ``{axis: index}`` held fixed (e.g. the reference channel).
    """
    rng = np.random.default_rng(seed)
    cols = []
    for ax, (s, p) in enumerate(zip(shape, patch, strict=False)):
        if fixed and ax in fixed:
            cols.append(np.full(n, fixed[ax]))
        else:
            cols.append(rng.integers(0, s // p, size=n) * p)
    return np.stack(cols, axis=1)


def _slices(origin: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(int(o), int(o) + p) for o, p in zip(origin, patch, strict=False))


def plain_patch_reads(array_path: str | os.PathLike, patch: Sequence[int], n: int, *,
                      seed: int = 0, fixed: dict[int, int] | None = None,
                      repeat: int = 3) -> dict[str, Any]:
    """One ``zarr`` read per patch in this process; patches/s (median of ``repeat``)."""
    import zarr

    z = zarr.open_array(str(array_path), mode="r")
    runs = []
    for r in range(repeat):
        orig = aligned_origins(z.shape, patch, n, seed + r, fixed)
        t0 = time.perf_counter()
        for o in orig:
            z[_slices(o, patch)]
        runs.append(time.perf_counter() - t0)
    med = float(np.median(runs))
    return {"mode": "plain loop", "n_patches": n, "runs_s": runs, "median_s": med,
            "patches_per_s": n / med, "patch": list(patch), "chunks": list(z.chunks)}


class ZarrPatchReads:
    """Map-style torch dataset: one zarr read per patch (fork/spawn safe: opens lazily)."""

    def __init__(self, array_path: str, patch: Sequence[int], origins: np.ndarray) -> None:
        self.array_path = str(array_path)
        self.patch = tuple(int(p) for p in patch)
        self.origins = origins
        self._z = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, i: int):
        import torch
        import zarr

        if self._z is None or self._pid != os.getpid():
            self._z = zarr.open_array(self.array_path, mode="r")
            self._pid = os.getpid()
        block = self._z[_slices(self.origins[i], self.patch)]
        return torch.from_numpy(np.asarray(block, dtype=np.float32))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_z": None, "_pid": None}


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def loader_patch_reads(array_path: str | os.PathLike, patch: Sequence[int], n: int, *,
                       num_workers: int = 0, batch_size: int = 32, seed: int = 0,
                       fixed: dict[int, int] | None = None, repeat: int = 3,
                       multiprocessing_context: str | None = None) -> dict[str, Any]:
    """One zarr read per patch through a torch DataLoader; patches/s incl. worker start-up."""
    import zarr
    from torch.utils.data import DataLoader

    shape = zarr.open_array(str(array_path), mode="r").shape
    rates, first, runs = [], [], []
    for r in range(repeat):
        ds = ZarrPatchReads(str(array_path), patch, aligned_origins(shape, patch, n, seed + r,
                                                                    fixed))
        dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=_worker_init if num_workers else None,
                        multiprocessing_context=multiprocessing_context if num_workers else None)
        got = 0
        t0 = time.perf_counter()
        for b in dl:
            if got == 0:
                first.append(time.perf_counter() - t0)
            got += b.shape[0]
        dt = time.perf_counter() - t0
        runs.append(dt)
        rates.append(got / dt)
    return {"mode": "torch DataLoader", "num_workers": num_workers, "batch_size": batch_size,
            "n_patches": n, "runs_s": runs, "patches_per_s": float(np.median(rates)),
            "patches_per_s_runs": rates, "first_batch_s": first, "patch": list(patch),
            "multiprocessing_context": multiprocessing_context or "default"}


def one_read_per_patch(array_path: str | os.PathLike, patch: Sequence[int], n: int, *,
                       num_workers: Sequence[int] = (0, 2), **kw: Any) -> list[dict[str, Any]]:
    """Plain loop plus DataLoader rows at each ``num_workers`` (the dataset's baseline)."""
    rows = [plain_patch_reads(array_path, patch, n, seed=kw.get("seed", 0),
                              fixed=kw.get("fixed"), repeat=kw.get("repeat", 3))]
    for nw in num_workers:
        rows.append(loader_patch_reads(array_path, patch, n, num_workers=nw, **kw))
    return rows


# ----------------------------------------------------------------------------- (c) cut patches
def cut_from_decoded(array_path: str | os.PathLike, patch: Sequence[int], n: int, *,
                     seed: int = 0, fixed: dict[int, int] | None = None,
                     max_bytes: int = 512 << 20, repeat: int = 3) -> dict[str, Any]:
    """Decode chunks once, then cut random patches from them.

    Two numbers: ``warm_patches_per_s`` cuts ``n`` random in-chunk patches (``.copy()``) from
    up to ``max_bytes`` of already-decoded chunks (the RAM ceiling); ``decode_and_cut`` decodes
    each chunk of that set once and cuts its share of an epoch (chunk voxels / patch voxels
    patches, at least 1) -- the floor of a chunk-aware sampler, decoding included.
    """
    import zarr

    z = zarr.open_array(str(array_path), mode="r")
    rng = np.random.default_rng(seed)
    chunk = tuple(min(c, s) for c, s in zip(z.chunks, z.shape, strict=False))
    grid = [math.ceil(s / c) for s, c in zip(z.shape, chunk, strict=False)]
    if fixed:
        for ax in fixed:
            grid[ax] = 1
    cbytes = math.prod(chunk) * z.dtype.itemsize
    n_chunks = max(1, min(math.prod(grid), max_bytes // cbytes))
    picks = [tuple(int(rng.integers(0, g)) for g in grid) for _ in range(n_chunks)]

    def chunk_sl(idx):
        sl = []
        for ax, (i, c, s) in enumerate(zip(idx, chunk, z.shape, strict=False)):
            if fixed and ax in fixed:
                sl.append(slice(fixed[ax], fixed[ax] + 1))
            else:
                sl.append(slice(i * c, min((i + 1) * c, s)))
        return tuple(sl)

    per_chunk = max(1, math.prod(chunk) // math.prod(patch))

    def origins(idx, k):  # drawn outside the timed loops
        shp = [sl.stop - sl.start for sl in chunk_sl(idx)]
        return np.stack([rng.integers(0, max(1, b - p + 1), size=k)
                         for b, p in zip(shp, patch, strict=True)], axis=1)

    plan = [(idx, origins(idx, per_chunk)) for idx in picks]

    def decode_and_cut():
        cut = 0
        for idx, orig in plan:
            block = z[chunk_sl(idx)]
            for o in orig:
                block[_slices(o, patch)].copy()
                cut += 1
        return cut

    t_dec = H.median_time(decode_and_cut, repeat=repeat)
    decoded = [z[chunk_sl(idx)] for idx in picks]
    which = rng.integers(0, len(decoded), size=n)
    warm_orig = [origins(picks[w], 1)[0] for w in which]

    def warm():
        for w, o in zip(which, warm_orig, strict=True):
            decoded[w][_slices(o, patch)].copy()

    t_warm = H.median_time(warm, repeat=repeat)
    return {"patch": list(patch), "chunks": list(chunk), "n_chunks_decoded": n_chunks,
            "patches_per_chunk": per_chunk,
            "warm_patches_per_s": n / t_warm.median_s, "warm": t_warm.as_dict(),
            "decode_and_cut_patches_per_s": t_dec.result / t_dec.median_s,
            "decode_and_cut": t_dec.as_dict(), "decode_and_cut_patches": t_dec.result}


# ----------------------------------------------------------------------------- main
def _read_section(datasets, args) -> tuple[list[dict], list[dict]]:
    rows, summary = [], []
    # threaded first, before any worker process exists (their RSS would count as children)
    thr = {ds.spec.name: dask_read(ds.array_path, "threads", repeat=args.repeat)
           for ds in datasets}
    cluster, client = local_cluster(2, 1)
    try:
        dist = {ds.spec.name: dask_read(ds.array_path, "distributed", repeat=args.repeat,
                                        client=client) for ds in datasets}
    finally:
        client.close()
        cluster.close()
    for ds in datasets:
        t, d = thr[ds.spec.name], dist[ds.spec.name]
        rows.append({"dataset": ds.spec.name, **t, "scheduler": "threads"})
        rows.append({"dataset": ds.spec.name, **d,
                     "scheduler": "LocalCluster 2 procs x 1 thread"})
        summary.append(H.summary_row(
            f"dask read+sum {ds.spec.name} ({ds.spec.nbytes / 2**30:.2f} GiB), threads",
            t["MBps"], "MB/s", note=f"peak RSS {t['peak_rss_mib']:.0f} MiB"))
        summary.append(H.summary_row(
            f"dask read+sum {ds.spec.name}, LocalCluster 2 procs", d["MBps"], "MB/s",
            baseline="threads", baseline_value=t["MBps"],
            note=f"peak RSS client+workers {d['peak_rss_mib']:.0f} MiB"))
    return rows, summary


def _patch_cases(ds2, ds3, large):
    cases = [("2D 64x64", ds2, (1, 64, 64), None, 2000)]
    ref = ds3.spec.ref_channel
    if ref is not None:
        cases.append(("3D 16x64x64 ref ch", ds3, (1, 16, 64, 64), {0: ref}, 400))
    else:
        cases.append(("3D 16x64x64", ds3, (16, 64, 64), None, 400))
    if large is not None:
        cases.append(("3D 16x64x64", large, (16, 64, 64), None, 400))
    return cases


def _patch_section(cases, args) -> tuple[list[dict], list[dict]]:
    rows, summary = [], []
    for label, ds, patch, fixed, n in cases:
        if args.quick:
            n = max(64, n // 4)
        name = f"{label} ({ds.spec.name})"
        reads = one_read_per_patch(ds.array_path, patch, n, fixed=fixed, repeat=args.repeat,
                                   num_workers=(0, 2))
        for r in reads:
            rows.append({"case": name, "kind": "one zarr read per patch", **r})
        cut = cut_from_decoded(ds.array_path, patch, 20 * n, fixed=fixed, repeat=args.repeat)
        rows.append({"case": name, "kind": "cut from decoded chunks", **cut})
        plain = reads[0]["patches_per_s"]
        summary.append(H.summary_row(f"{name}: one zarr read per patch (1 process)", plain,
                                     "patches/s"))
        for r in reads[1:]:
            summary.append(H.summary_row(
                f"{name}: one read per patch, DataLoader nw={r['num_workers']}",
                r["patches_per_s"], "patches/s", baseline="plain loop", baseline_value=plain))
        summary.append(H.summary_row(f"{name}: decode each chunk once + cut its share",
                                     cut["decode_and_cut_patches_per_s"], "patches/s",
                                     baseline="one read per patch", baseline_value=plain))
        summary.append(H.summary_row(f"{name}: cut from decoded chunks (RAM ceiling)",
                                     cut["warm_patches_per_s"], "patches/s",
                                     baseline="one read per patch", baseline_value=plain))
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    """Run the baselines; print tables; write ``results/baselines.json``."""
    args = H.bench_argparser(__doc__.split("\n")[0]).parse_args(argv)
    threads = H.set_threads(args.threads)
    t0 = time.perf_counter()
    ds2, ds3 = D.ensure("ref2d", args.cache), D.ensure("vol3d", args.cache)
    read_sets = [ds3] if args.quick else [ds2, ds3]
    large, skipped = None, []
    big = "large-ram" if args.large else (None if args.quick else "large-4g")
    if big:
        try:
            large = D.ensure(big, args.cache)
            read_sets.append(large)
        except D.InsufficientDiskError as exc:
            print(f"SKIP {big}: {exc}")
            skipped.append({"dataset": big, "reason": str(exc)})
    t_data = time.perf_counter() - t0
    read_rows, s1 = _read_section(read_sets, args)
    H.print_table("(a) plain Dask read of the whole volume (sum of every chunk)", read_rows,
                  ["dataset", "scheduler", "median_s", "MBps", "GBps", "peak_rss_mib",
                   "n_chunks"])
    patch_rows, s2 = _patch_section(_patch_cases(ds2, ds3, large if args.large else None), args)
    H.print_table("(b) one zarr read per patch / (c) cut from decoded chunks", patch_rows,
                  ["case", "kind", "mode", "num_workers", "patches_per_s",
                   "warm_patches_per_s", "decode_and_cut_patches_per_s"])
    summary = s1 + s2
    H.print_table("baselines: summary", summary, ["what", "value", "unit", "baseline", "ratio"])
    path = H.write_results("baselines", {
        "datasets": [d.info() for d in {id(d): d for d in (ds2, ds3, *read_sets)}.values()],
        "skipped": skipped, "data_prep_s": t_data, "threads": threads, "quick": args.quick,
        "large": args.large, "repeat": args.repeat, "dask_read": read_rows,
        "patches": patch_rows, "summary": summary}, args.results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
