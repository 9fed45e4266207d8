"""Micro-benchmark of the Max-coverage region kernel (stat ``max_cov<c>``) against a plain read.

The Dask filter pass cuts the volume into region blocks that start in one storage chunk each
(``patchsieve.grid.region_chunks``); a volume has about as many region blocks as storage chunks,
so ``kernel s per block / (read + decode + sum) s per chunk`` measured here is the kernel's share
of the filter-pass ratio of issue 5 (Max pass <= 5x a plain Dask read).

Data (``benchmarks/data.py`` cache):

- ``large-2g`` (64x4096x4096 uint16, chunks 32x256x256), patch 16x64x64, coverage 0.125: region
  blocks of 2x4x4 regions = slabs of 48x320x320 pixels (the last z block is 32 pixels deep,
  zero-padded by the kernel), at a few positions;
- ``ref2d`` (79x1024x1024 float32, chunks 1x512x512), patch 64x64, coverage 0.25: region blocks
  of 8x8 regions = slabs of 1x576x576 pixels of a few slices; also the same slabs rounded to
  integers (float32 integer-valued data take the 16-bit key path).

Baseline, same run: read + decode + sum of the storage chunks at the same positions
(``zarr`` ``arr[chunk]``, page-cache reads), one chunk per block. Each timing (wall and process CPU
time, the latter less disturbed by other processes on a shared machine) is the median of
``--repeat`` passes over all positions, the passes of the read, the kernel (and the old kernel)
interleaved. With ``--compare REV`` the kernels of git revision ``REV``
(``_jit.py`` and ``_kernels.py``, loaded from a temporary copy) are timed in the same run, and
their outputs are checked bit for bit against the working tree's.

Usage::

    .venv/bin/python benchmarks/bench_max_kernel.py [--repeat 3] [--compare HEAD] [--blocks 6]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _harness as H  # noqa: E402
from data import SPECS, Dataset, cache_dir  # noqa: E402


def _load_rev(rev: str, tmp: Path) -> ModuleType:
    """``_kernels`` of git revision ``rev`` (with its own ``_jit``) from a temporary copy."""
    pkg = tmp / f"oldkern_{abs(hash(rev)) % 10**8}"
    pkg.mkdir()
    for name in ("_jit.py", "_kernels.py"):
        src = subprocess.run(["git", "show", f"{rev}:src/patchsieve/filters/{name}"],
                             cwd=H.REPO_ROOT, check=True, capture_output=True, text=True).stdout
        src = src.replace("from patchsieve.filters import _jit", f"import {pkg.name}._jit as _jit")
        (pkg / name).write_text(src)
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    return importlib.import_module(f"{pkg.name}._kernels")


def _blocks_3d(arr: Any, nblocks: int) -> list[tuple[np.ndarray, tuple[int, ...], tuple]]:
    """(slab, n, chunk selection) of region blocks of large-2g (patch 16x64x64)."""
    Z, Y, X = arr.shape
    rng = np.random.default_rng(0)
    out = []
    for i in range(nblocks):
        zb = i % 2  # both z blocks: regions 0-1 (pixels 0-48) and 2-3 (pixels 32-64, padded)
        yb, xb = (int(v) for v in rng.integers(0, Y // 256 - 1, 2))
        z0, y0, x0 = 32 * zb, 256 * yb, 256 * xb
        slab = np.asarray(arr[z0:min(z0 + 48, Z), y0:y0 + 320, x0:x0 + 320])[None]
        chunk = (slice(z0, z0 + 32), slice(y0, y0 + 256), slice(x0, x0 + 256))
        out.append((slab, (2, 4, 4), chunk))
    return out


def _blocks_2d(arr: Any, nblocks: int) -> list[tuple[np.ndarray, tuple[int, ...], tuple]]:
    """(slab, n, chunk selection) of region blocks of ref2d (patch 64x64)."""
    out = []
    for i in range(nblocks):
        s = 7 * i % arr.shape[0]
        y0, x0 = 512 * (i % 2), 0
        h = min(576, arr.shape[1] - y0)
        slab = np.asarray(arr[s:s + 1, y0:y0 + h, x0:x0 + 576])
        n = ((h + 1) // 64 if h < 576 else 8, 8)
        out.append((slab, n, (slice(s, s + 1), slice(y0, y0 + 512), slice(x0, x0 + 512))))
    return out


def _blocks_2d_int(arr: Any, nblocks: int) -> list[tuple[np.ndarray, tuple[int, ...], tuple]]:
    """The ref2d blocks rounded to integers (still float32): the 16-bit key path."""
    return [(np.rint(b), n, sel) for b, n, sel in _blocks_2d(arr, nblocks)]


def _time_interleaved(fns: dict[str, Any], items: dict[str, list], repeat: int) -> dict[str, H.Timing]:
    """Median of ``repeat`` passes per function, the passes of all functions interleaved
    (read, new, old, read, new, old, ...) so that a busy shared machine hits them alike."""
    runs: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, Any] = {}
    for name, fn in fns.items():  # warm-up (JIT compile, page cache)
        results[name] = [fn(*it) for it in items[name]]
    for _ in range(repeat):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            results[name] = [fn(*it) for it in items[name]]
            runs[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = {k: H.Timing(statistics.median(v), v, results[k]) for k, v in runs.items()}
    out.update({f"{k}_cpu": H.Timing(statistics.median(v), v) for k, v in cpu.items()})
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from patchsieve.filters import _jit
    from patchsieve.filters import _kernels as K

    if not _jit.AVAILABLE:
        raise SystemExit("numba is not available: the Max kernel benchmark times the numba path")
    old = None
    tmp = tempfile.TemporaryDirectory()
    if args.compare:
        old = _load_rev(args.compare, Path(tmp.name))
    cases = {
        "large-2g 3D uint16 16x64x64 cov 0.125": ("large-2g", _blocks_3d, (16, 64, 64), 0.125),
        "ref2d 2D float32 64x64 cov 0.25": ("ref2d", _blocks_2d, (64, 64), 0.25),
        "ref2d rounded (integer-valued float32) 2D": ("ref2d", _blocks_2d_int, (64, 64),
                                                        0.25),
    }
    rows, results = [], {}
    for label, (name, make, ps, cov) in cases.items():
        if args.only and args.only not in name:
            continue
        ds = Dataset(SPECS[name], cache_dir() / name)
        arr = ds.open_zarr()
        blocks = make(arr, args.blocks)
        items = [(b, ps, n, cov) for b, n, _ in blocks]
        def read(sel, arr=arr):
            return int(np.asarray(arr[sel]).sum(dtype=np.int64))

        fns = {"read": read, "new": K.region_max_coverage}
        its = {"read": [(sel,) for _, _, sel in blocks], "new": items}
        if old is not None:
            fns["old"] = old.region_max_coverage
            its["old"] = items
        tm = _time_interleaved(fns, its, args.repeat)
        read, new = tm["read"], tm["new"]
        res = {"blocks": len(blocks), "read_s": read.as_dict(), "kernel_s": new.as_dict(),
               "kernel_over_read": new.median_s / read.median_s}
        row = {"case": label, "read+sum s/block": f"{read.median_s / len(blocks):.4f}",
               "kernel s/block": f"{new.median_s / len(blocks):.4f}",
               "kernel/read": f"{new.median_s / read.median_s:.2f}",
               "cpu kernel/read": f"{tm['new_cpu'].median_s / tm['read_cpu'].median_s:.2f}"}
        res.update(read_cpu_s=tm["read_cpu"].as_dict(), kernel_cpu_s=tm["new_cpu"].as_dict())
        if old is not None:
            ref = tm["old"]
            for a, b in zip(new.result, ref.result):
                if not np.array_equal(a, b) or not np.array_equal(np.signbit(a), np.signbit(b)):
                    raise SystemExit(f"{label}: output differs from {args.compare}")
            res.update(compare=args.compare, old_kernel_s=ref.as_dict(),
                       old_over_read=ref.median_s / read.median_s,
                       speedup=ref.median_s / new.median_s)
            cpu_old, cpu_new = tm["old_cpu"].median_s, tm["new_cpu"].median_s
            res.update(old_kernel_cpu_s=tm["old_cpu"].as_dict(), cpu_speedup=cpu_old / cpu_new)
            row.update({f"{args.compare} kernel/read": f"{ref.median_s / read.median_s:.2f}",
                        f"cpu {args.compare} kernel/read":
                            f"{cpu_old / tm['read_cpu'].median_s:.2f}",
                        "speed-up": f"{ref.median_s / new.median_s:.2f}x",
                        "cpu speed-up": f"{cpu_old / cpu_new:.2f}x"})
        rows.append(row)
        results[label] = res
    tmp.cleanup()
    H.print_table("Max-coverage kernel vs plain read (same run)", rows)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=6, help="region blocks per dataset")
    ap.add_argument("--compare", default=None, help="git revision whose kernels to time too")
    ap.add_argument("--only", default=None, help="substring of the dataset name to run")
    ap.add_argument("--no-write", action="store_true", help="do not write results/*.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = run(args)
    if not args.no_write:
        summary = [H.summary_row(f"Max-coverage kernel, {label}", r["kernel_s"]["median_s"] / r["blocks"],
                                 "s/block", baseline="read+sum of the same block",
                                 baseline_value=r["read_s"]["median_s"] / r["blocks"],
                                 better="lower")
                   for label, r in results.items()]
        H.write_results("max_kernel", {"results": results, "args": vars(args), "summary": summary,
                                       "machine": H.machine_info(), "versions": H.versions(),
                                       "threads": H.thread_settings(),
                                       "wall_s": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
