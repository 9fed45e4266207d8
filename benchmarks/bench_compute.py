"""Filter pass (patchsieve.compute) vs a plain Dask read of the same Zarr volume, same cluster.

Measures, in one run (issue 5):
1. per filter (Max, MeanStd, Shannon, Mask): filter-pass time / time to read + sum every chunk
   with Dask on the same LocalCluster (median of --repeat runs each). Targets: <= 2.5x MeanStd and
   Mask, <= 4x Shannon (integer data), <= 5x Max.
2. ``--rss``: peak RSS of the whole job (client + workers, a ``patchsieve compute`` subprocess) on
   the 2 GiB vs the 16 GiB volume; target ratio <= 1.2.
3. ``--scaling``: the same pass with 1 vs 2 worker processes.

Usage::

    python benchmarks/bench_compute.py                      # 4 GiB volume, all filters
    python benchmarks/bench_compute.py --dataset large-2g --repeat 1 --filters meanstd
    python benchmarks/bench_compute.py --rss --scaling      # + RSS vs size and 1-vs-2 workers
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import data as bench_data  # noqa: E402

PATCH = (16, 64, 64)
TARGETS = {"meanstd": "<=2.5", "mask": "<=2.5", "shannon": "<=4", "max": "<=5"}


def _configs(name: str, mask_path: str | None):
    from patchsieve.config import (
        MaskPatchFilterConfig,
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )

    if name == "max":
        return MaxPatchFilterConfig(threshold=400.0)
    if name == "meanstd":
        return MeanStdPatchFilterConfig(mean_threshold=150.0, std_threshold=20.0)
    if name == "shannon":
        return ShannonPatchFilterConfig(threshold=7.5)
    if name == "mask":
        return MaskPatchFilterConfig(coverage=0.25, mask=mask_path)
    raise ValueError(name)


def ensure_mask(ds, cache: Path) -> str:
    """A binary uint8 mask Zarr of the volume's shape (volume > 300), cached beside it."""
    import dask.array as da
    import zarr

    path = cache / f"{ds.spec.name}-mask.zarr"
    stamp = path / ".done"
    if stamp.exists():
        return str(path)
    src = zarr.open_group(str(ds.zarr_path), mode="r")
    arr = src["s0"] if "s0" in src else src[next(iter(src.array_keys()))]
    x = da.from_zarr(arr)
    m = (x > 300).astype(np.uint8)
    out = zarr.create_array(str(path), shape=m.shape, chunks=arr.chunks, dtype="uint8",
                            dimension_names=tuple(ds.spec.axes), overwrite=True)
    da.store(m, out, lock=False)
    stamp.write_text("ok")
    return str(path)


def plain_read(client, url: str) -> float:
    import dask.array as da
    import zarr

    g = zarr.open_group(url, mode="r")
    arr = g["s0"] if "s0" in g else g[next(iter(g.array_keys()))]
    x = da.from_zarr(arr)
    t0 = time.perf_counter()
    client.compute(x.sum(dtype="u8")).result()
    return time.perf_counter() - t0


def _patch_for(url: str) -> tuple[int, ...]:
    from patchsieve import open_volume

    return PATCH if "z" in open_volume(url).dims else PATCH[1:]


def run_pass(client, url: str, cfg, out: Path) -> float:
    from patchsieve import compute

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    compute(url, {"f": cfg}, _patch_for(url), out, client=client, overwrite=True)
    return time.perf_counter() - t0


def bench_ratios(args) -> list[dict]:
    from patchsieve.cluster import get_client

    ds = bench_data.ensure(args.dataset)
    url = str(ds.zarr_path)
    nbytes = ds.spec.nbytes
    cache = bench_data.cache_dir()
    mask = ensure_mask(ds, cache) if "mask" in args.filters else None
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_compute_"))
    try:
        with get_client(n_workers=args.workers) as client:
            # warm-up: JIT compile + page cache
            run_pass(client, url, _configs("meanstd", None), tmp / "warm.zarr")
            read = h.median_time(lambda: plain_read(client, url), repeat=args.repeat)
            read_s = read.median_s
            rows.append(h.summary_row("plain Dask read (sum of every chunk)", read_s, "s",
                                      better="lower",
                                      note=f"{h.mb_per_s(nbytes, read_s):.0f} MB/s; runs {read.runs_s}"))
            for name in args.filters:
                cfg = _configs(name, mask)
                t = h.median_time(lambda c=cfg, n=name: run_pass(client, url, c, tmp / f"{n}.zarr"),
                                  repeat=args.repeat)
                rows.append(h.summary_row(f"filter pass {name}", t.median_s, "s",
                                          baseline="plain Dask read", baseline_value=read_s,
                                          target=TARGETS[name], better="lower",
                                          note=f"{h.mb_per_s(nbytes, t.median_s):.0f} MB/s; "
                                               f"runs {[round(x, 2) for x in t.runs_s]}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


_CLI_THRESHOLDS = {"meanstd": "150", "shannon": "7.5", "max": "400"}


def _cli_peak(url: str, out: Path, workers: int, filt: str = "meanstd") -> h.ProcessResult:
    cmd = [sys.executable, "-m", "patchsieve.cli", "-q", "compute", url, "--filter", filt,
           "--threshold", _CLI_THRESHOLDS[filt], "--patch", ",".join(map(str, PATCH)), "-o",
           str(out), "--overwrite", "--no-progress"]
    cmd += ["--n-workers", str(workers)]
    return h.run_with_peak_rss(cmd, timeout=3600)


def bench_rss(args) -> list[dict]:
    """Peak RSS of a ``patchsieve compute`` subprocess (client + in-process workers) per filter
    of ``--rss-filters`` on the 2 GiB and the 16 GiB volume. MeanStd and Mask stream cell by
    cell; Max and Shannon hold the chunks a region block's one-patch halo reaches into."""
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_rss_"))
    try:
        for filt in args.rss_filters:
            peaks = {}
            for name in ("large-2g", "large-16g"):
                try:
                    ds = bench_data.ensure(name)
                except bench_data.InsufficientDiskError as err:
                    print(f"skip RSS on {name}: {err}")
                    return rows
                res = _cli_peak(str(ds.zarr_path), tmp / f"{name}.zarr", args.workers or 1, filt)
                if res.returncode != 0:
                    raise RuntimeError(res.stderr[-2000:])
                peaks[name] = res.peak_rss_bytes
                rows.append(h.summary_row(f"peak RSS compute {filt} on {name}",
                                          res.peak_rss_bytes / 2**20, "MiB", better="lower",
                                          note=f"wall {res.wall_s:.1f} s, "
                                               f"{ds.spec.nbytes / 1e9:.1f} GB"))
            rows.append(h.summary_row(f"peak RSS {filt} 16 GiB volume", peaks["large-16g"] / 2**20,
                                      "MiB", baseline="peak RSS 2 GiB volume",
                                      baseline_value=peaks["large-2g"] / 2**20, target="<=1.2",
                                      better="lower"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def bench_scaling(args) -> list[dict]:
    from patchsieve.cluster import get_client

    ds = bench_data.ensure(args.dataset)
    url = str(ds.zarr_path)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    times = {}
    try:
        for n in (1, 2):
            with get_client(n_workers=n, threads_per_worker=max(1, (os.cpu_count() or 2) // n),
                            processes=True) \
                    as client:
                run_pass(client, url, _configs("meanstd", None), tmp / "warm.zarr")
                t = h.median_time(lambda: run_pass(client, url, _configs("meanstd", None),
                                                   tmp / "s.zarr"), repeat=args.repeat)
                times[n] = t.median_s
                rows.append(h.summary_row(f"MeanStd pass, {n} worker process(es)", t.median_s, "s",
                                          better="lower", note=f"runs {t.runs_s}"))
        rows.append(h.summary_row("MeanStd pass, 2 worker processes", times[2], "s",
                                  baseline="1 worker process", baseline_value=times[1],
                                  better="lower"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="large-4g")
    p.add_argument("--filters", default="max,meanstd,shannon,mask")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes")
    p.add_argument("--rss", action="store_true", help="also peak RSS on 2 GiB vs 16 GiB")
    p.add_argument("--rss-filters", default="meanstd,shannon",
                   help="filters whose peak RSS --rss measures (comma-separated)")
    p.add_argument("--scaling", action="store_true", help="also 1 vs 2 worker processes")
    p.add_argument("--skip-ratios", action="store_true")
    args = p.parse_args(argv)
    args.filters = [f.strip() for f in args.filters.split(",") if f.strip()]
    args.rss_filters = [f.strip() for f in args.rss_filters.split(",") if f.strip()]
    rows: list[dict] = []
    if not args.skip_ratios:
        rows += bench_ratios(args)
    if args.scaling:
        rows += bench_scaling(args)
    if args.rss:
        rows += bench_rss(args)
    h.print_table(f"filter pass vs plain read ({args.dataset}, patch {PATCH})", rows)
    name = "bench_compute" if not args.skip_ratios else "bench_compute_rss"
    if not args.skip_ratios and args.dataset != "large-4g":
        name += f"_{args.dataset}"
    h.write_results(name, {"dataset": args.dataset, "patch": PATCH, "rows": rows,
                           "args": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
