"""Scale of the streaming filter pass (issue 16): start-up, memory, resume and throughput at 10 TB.

Sections (``--sections``; ``make bench-scale`` runs :data:`DEFAULT`, ``make bench-scale-long``
adds :data:`LONG`):

``startup``  11 TB metadata-only Zarr (4,096 x 40,960 x 32,768 uint16, chunks 16 x 256 x 256;
             no chunk written: reads cost nothing, the pass's own overhead is measured):
             ``patchsieve compute ... --patch 16,64,64`` for MeanStd, Shannon and Max, stopped
             after 90 s: blocks with markers and peak summed RSS of its processes.
``resume``   the same shape as a procedural volume (real zstd chunks, served counted): time to
             the first block; Ctrl-C (SIGINT), rerun: time to the first new block, blocks with a
             marker served again (0 expected); SIGKILL, rerun: blocks computed twice against the
             bound "tasks in flight x blocks per task + one marker flush".
``wide``     Shannon and Max, the same number of blocks on 64 x 16,384^2 and 64 x 65,536^2
             procedural volumes: peak summed RSS (ratio <= 1.1, <= 2 GiB), z layers reached.
``full``     a complete MeanStd pass over a >= 256 GiB procedural volume (512 x 16,384^2):
             chunks/s, GB/s against a plain Dask read of a slab of the same volume, max / median
             summed RSS after the first minute (<= 1.2).
``apply``    a complete side-car of an 11 TB-shaped volume (84 million regions, synthetic
             statistics): ``patchsieve suggest-threshold ... --apply`` peak RSS (<= 1.5 GiB).
``costs``    per-chunk costs per filter (serve, decode, kernels) and pass / read ratios on a
             2 GiB procedural volume: the inputs of docs/scaling.md's model.
``cluster``  (long) ``dask scheduler`` + 3 ``dask worker`` processes started separately, a
             64 GiB procedural MeanStd pass with one worker SIGKILLed mid-run: side-car identical
             to an in-process run's, scheduler RSS (<= 300 MiB), tasks in flight.

Usage::

    python benchmarks/bench_scale.py                       # DEFAULT sections (~50 min here)
    python benchmarks/bench_scale.py --sections startup,wide
    python benchmarks/bench_scale.py --sections cluster    # the long one (see make bench-scale-long)

Results: ``benchmarks/results/scale.json`` (a run of some sections keeps the others' rows).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

DEFAULT = ("startup", "resume", "wide", "full", "apply", "costs")
LONG = ("cluster",)
SHAPE_11TB = (4096, 40960, 32768)
CHUNKS = (16, 256, 256)
PATCH = "16,64,64"
THRESHOLDS = {"mean_std": "150", "shannon": "7.5", "max": "400"}
PY = sys.executable


def _cli(src: str, filt: str, out: str, *extra: str) -> list[str]:
    return [PY, "-m", "patchsieve.cli", "-v", "compute", src, "--filter", filt, "--threshold",
            THRESHOLDS[filt], "--patch", PATCH, "-o", out, "--no-progress", *extra]


def _markers(out: str) -> np.ndarray | None:
    """The pass's block markers (the larger count of its marker arrays), None before any."""
    import zarr

    try:
        g = zarr.open_group(out, mode="r")
        arrays = [np.asarray(g["progress"][k][...]) for k in g["progress"].array_keys()]
    except Exception:  # noqa: BLE001 - not written yet
        return None
    return max(arrays, key=lambda a: int(np.count_nonzero(a))) if arrays else None


def _count(out: str) -> int:
    m = _markers(out)
    return 0 if m is None else int(np.count_nonzero(m))


class Run:
    """A command in its own process group: summed RSS of its tree sampled every
    ``interval`` s, block markers of ``out`` polled every ``poll`` s."""

    def __init__(self, cmd: list[str], out: str, *, log: str | None = None,
                 interval: float = 0.5, poll: float = 1.0):
        import psutil

        self.out, self.interval, self.poll = out, interval, poll
        self.t0 = time.monotonic()
        self.log = open(log or os.devnull, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     env=dict(os.environ, PYTHONWARNINGS="ignore"))
        self.ps = psutil.Process(self.proc.pid)
        self.rss: list[tuple[float, int]] = []
        self.marks: list[tuple[float, int]] = []
        self._last_poll = -1e9

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def sample(self) -> None:
        import psutil

        total = 0
        try:
            procs = [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        if total:
            self.rss.append((self.elapsed(), total))
        if self.elapsed() - self._last_poll >= self.poll:
            self._last_poll = self.elapsed()
            self.marks.append((self.elapsed(), _count(self.out)))

    def until(self, predicate: Any, timeout: float) -> bool:
        """Sample until ``predicate(self)`` or the timeout or the end of the command."""
        while self.elapsed() < timeout and self.proc.poll() is None:
            self.sample()
            if predicate(self):
                return True
            time.sleep(self.interval)
        self.sample()
        return bool(predicate(self))

    def first_mark_after(self, before: int) -> float | None:
        return next((t for t, n in self.marks if n > before), None)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)

    @property
    def peak_rss_mib(self) -> float:
        return max((r for _, r in self.rss), default=0) / 2**20


def _load(results: Path) -> dict[str, Any]:
    path = results / "scale.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ============================================================================ sections
def startup(work: Path, args: Any) -> tuple[list[dict], dict]:
    """11 TB metadata-only: blocks with markers 90 s after the command starts, peak RSS."""
    import zarr

    src = str(work / "v11t-metadata-only.zarr")
    zarr.create_array(src, shape=SHAPE_11TB, chunks=CHUNKS, dtype="uint16",
                      dimension_names=("z", "y", "x"), overwrite=True)
    rows, details = [], {}
    for filt in ("mean_std", "shannon", "max"):
        out = str(work / f"startup-{filt}.patchsieve.zarr")
        run = Run(_cli(src, filt, out, "--overwrite"), out, log=str(work / f"startup-{filt}.log"))
        run.until(lambda r: False, args.startup_s)
        n = _count(out)
        at = run.elapsed()
        run.stop(signal.SIGINT)
        details[filt] = {"blocks_at_stop": n, "stopped_at_s": round(at, 1),
                         "first_marker_s": run.first_mark_after(0),
                         "peak_rss_mib": round(run.peak_rss_mib, 1),
                         "load_avg_1min": os.getloadavg()[0]}
        rows.append(h.summary_row(
            f"11 TB metadata-only {filt}: blocks with markers {args.startup_s:.0f} s after start",
            n, "blocks", baseline="required", baseline_value=200, target=">=1",
            note=f"first marker at {details[filt]['first_marker_s']} s"))
        rows.append(h.summary_row(f"11 TB metadata-only {filt}: peak summed RSS",
                                  round(run.peak_rss_mib), "MiB", baseline="budget 2 GiB",
                                  baseline_value=2048, target="<=1", better="lower"))
        shutil.rmtree(out, ignore_errors=True)
    return rows, details


def _fingerprint_chunks(url: str) -> set[tuple[int, ...]]:
    """The chunks source_fingerprint reads (first, last and 8 spread between)."""
    from patchsieve.demo import describe_procedural

    info = describe_procedural(url)
    grid = [-(-n // c) for n, c in zip(info["shape"], info["chunks"])]
    total = int(np.prod(grid))
    flat = {0, total - 1, *(int(i) for i in np.linspace(0, total - 1, 8))}
    return {tuple(int(c) for c in np.unravel_index(f, grid)) for f in flat}


def resume(work: Path, args: Any) -> tuple[list[dict], dict]:
    """10 TB procedural MeanStd: first block, Ctrl-C resume, SIGKILL resume (counted)."""
    from patchsieve.demo import procedural_url, served_chunks
    from patchsieve.filterpass._plan import MAX_GROUP, TASK_BYTES
    from patchsieve.filterpass._scheduler import TASKS_PER_THREAD
    from patchsieve.sidecar._writer import FLUSH_EVERY_BLOCKS

    url = procedural_url(SHAPE_11TB, CHUNKS, seed=11)
    counts = work / "resume-counts"
    shutil.rmtree(counts, ignore_errors=True)
    out = str(work / "resume.patchsieve.zarr")
    shutil.rmtree(out, ignore_errors=True)
    so = ["--storage-options", json.dumps({"counts": str(counts)})]
    fp = _fingerprint_chunks(url)

    def marked() -> set[tuple[int, ...]]:
        m = _markers(out)
        return set() if m is None else {tuple(int(i) for i in x) for x in np.argwhere(m)}

    cmd = _cli(url, "mean_std", out, *so)
    r1 = Run(cmd, out, log=str(work / "resume-1.log"), poll=0.5, interval=0.25)
    r1.until(lambda r: False, args.resume_s)
    r1.stop(signal.SIGINT)
    m1, s1 = marked(), served_chunks(counts, url)
    r2 = Run(cmd, out, log=str(work / "resume-2.log"), poll=0.5, interval=0.25)
    r2.until(lambda r: False, args.resume_s)
    r2.stop(signal.SIGKILL)
    m2 = marked()
    s2 = served_chunks(counts, url) - s1
    r3 = Run(cmd, out, log=str(work / "resume-3.log"), poll=0.5, interval=0.25)
    r3.until(lambda r: r.marks and r.marks[-1][1] > len(m2) + 1000, args.resume_s)
    r3.stop(signal.SIGINT)
    s3 = served_chunks(counts, url) - s1 - s2
    again_sigint = (set(s2) & m1) - fp
    again_sigkill = (set(s3) & set(s2)) - fp
    marked_again = (set(s3) & m2) - fp
    threads = 2
    group = max(1, min(MAX_GROUP, TASK_BYTES // (2 * int(np.prod(CHUNKS)))))
    bound = TASKS_PER_THREAD * threads * group + FLUSH_EVERY_BLOCKS
    details = {"run1": {"first_block_s": r1.first_mark_after(0), "blocks": len(m1),
                        "peak_rss_mib": round(r1.peak_rss_mib)},
               "run2_after_sigint": {"first_new_block_s": r2.first_mark_after(len(m1)),
                                     "marked_blocks_served_again": len(again_sigint),
                                     "blocks_at_sigkill": len(m2)},
               "run3_after_sigkill": {"first_new_block_s": r3.first_mark_after(len(m2)),
                                      "blocks_computed_twice": len(again_sigkill),
                                      "marked_blocks_served_again": len(marked_again),
                                      "bound_in_flight_plus_flush": bound},
               "fingerprint_chunks_excluded": len(fp)}
    rows = [
        h.summary_row("10 TB procedural MeanStd: first block done after start",
                      details["run1"]["first_block_s"], "s", baseline="limit", baseline_value=10,
                      target="<=1", better="lower"),
        h.summary_row("after Ctrl-C, rerun: first new block after start",
                      details["run2_after_sigint"]["first_new_block_s"], "s",
                      baseline="limit", baseline_value=10, target="<=1", better="lower"),
        h.summary_row("after Ctrl-C, rerun: blocks with a marker computed again",
                      len(again_sigint), "blocks", better="lower",
                      note=f"{len(m1)} blocks marked before; counted on the procedural store"),
        h.summary_row("after SIGKILL, rerun: blocks computed twice", len(again_sigkill),
                      "blocks", baseline="in flight + one flush", baseline_value=bound,
                      target="<=1", better="lower",
                      note=f"{len(marked_again)} of them had a marker"),
    ]
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(counts, ignore_errors=True)
    return rows, details


def wide(work: Path, args: Any) -> tuple[list[dict], dict]:
    """Shannon and Max: the same blocks on 16,384^2 and 65,536^2 planes; peak RSS."""
    from patchsieve.demo import procedural_url

    rows, details = [], {}
    n = args.wide_blocks
    for filt in ("shannon", "max"):
        peaks = {}
        for side in (16384, 65536):
            url = procedural_url((64, side, side), CHUNKS, seed=side)
            out = str(work / f"wide-{filt}-{side}.patchsieve.zarr")
            shutil.rmtree(out, ignore_errors=True)
            run = Run(_cli(url, filt, out), out, log=str(work / f"wide-{filt}-{side}.log"),
                      interval=0.25, poll=1.0)
            run.until(lambda r: r.marks and r.marks[-1][1] >= n, args.wide_timeout_s)
            run.stop(signal.SIGINT)
            m = _markers(out)
            done = int(np.count_nonzero(m)) if m is not None else 0
            layers = sorted({int(z) for z in np.argwhere(m)[:, 0]}) if done else []
            # tiles whose whole depth is done: their blocks read the next layer's chunks (z halo)
            full_cols = int(np.count_nonzero(m.all(axis=0))) if m is not None else 0
            peaks[side] = run.peak_rss_mib
            details[f"{filt}-{side}"] = {"blocks": done, "z_layers_with_blocks": layers,
                                         "columns_done_through_z": full_cols,
                                         "peak_rss_mib": round(run.peak_rss_mib),
                                         "seconds": round(run.elapsed(), 1)}
            shutil.rmtree(out, ignore_errors=True)
        rows.append(h.summary_row(f"{filt}: peak summed RSS, 64x65,536^2 plane", round(peaks[65536]),
                                  "MiB", baseline="64x16,384^2 plane", baseline_value=round(peaks[16384]),
                                  target="<=1.1", better="lower",
                                  note=f"{n} blocks each; z layers "
                                       f"{details[f'{filt}-65536']['z_layers_with_blocks']}"))
        rows.append(h.summary_row(f"{filt}: peak summed RSS (larger of the two)",
                                  round(max(peaks.values())), "MiB", baseline="budget 2 GiB",
                                  baseline_value=2048, target="<=1", better="lower"))
    return rows, details


def _plain_read_rate(url: str, region: tuple[slice, ...]) -> tuple[float, float]:
    """Seconds and bytes of a plain Dask read (sum) of ``region`` on the default cluster."""
    from patchsieve import open_volume
    from patchsieve.cluster import get_client

    v = open_volume(url).data[region]
    with get_client() as c:
        c.compute(v[:16].sum(dtype="u8")).result()  # warm-up (bank, JIT)
        t = time.perf_counter()
        c.compute(v.sum(dtype="u8")).result()
        return time.perf_counter() - t, float(v.nbytes)


def full(work: Path, args: Any) -> tuple[list[dict], dict]:
    """A complete MeanStd pass over a >= 256 GiB procedural volume: flat memory, rates."""
    from patchsieve.demo import describe_procedural, procedural_url

    shape = (args.full_depth, 16384, 16384)
    url = procedural_url(shape, CHUNKS, seed=256)
    info = describe_procedural(url)
    out = str(work / "full.patchsieve.zarr")
    shutil.rmtree(out, ignore_errors=True)
    read_s, read_bytes = _plain_read_rate(url, (slice(0, 64), slice(0, 4096), slice(0, 4096)))
    run = Run(_cli(url, "mean_std", out), out, log=str(work / "full.log"), interval=1.0,
              poll=30.0)
    run.until(lambda r: False, args.full_timeout_s)
    rc = run.stop(signal.SIGINT)
    wall = run.elapsed()
    after = [r for t, r in run.rss if t >= 60.0]
    flat = max(after) / float(np.median(after)) if after else None
    gbps = info["nbytes"] / wall / 1e9
    read_gbps = read_bytes / read_s / 1e9
    details = {"shape": shape, "nbytes": info["nbytes"], "chunks": info["n_chunks"],
               "returncode": rc, "wall_s": round(wall, 1), "chunks_per_s": info["n_chunks"] / wall,
               "gb_per_s": gbps, "rss_max_mib": round(max(after) / 2**20) if after else None,
               "rss_median_mib": round(float(np.median(after)) / 2**20) if after else None,
               "rss_series_mib": [(round(t), round(r / 2**20)) for t, r in run.rss[:: 30]],
               "plain_read_gb_per_s": read_gbps}
    rows = [
        h.summary_row(f"full MeanStd pass, {info['nbytes'] / 2**30:.0f} GiB procedural: "
                      "max / median summed RSS after 1 min", flat, "x", target="<=1.2",
                      better="lower", note=f"{details['rss_median_mib']} MiB median, exit {rc}"),
        h.summary_row("full MeanStd pass: throughput", gbps, "GB/s",
                      baseline="plain Dask read of a 2 GiB slab", baseline_value=read_gbps,
                      note=f"{info['n_chunks'] / wall:.0f} chunks/s, {wall / 60:.1f} min"),
    ]
    shutil.rmtree(out, ignore_errors=True)
    return rows, details


def _synthetic_sidecar(path: str, work: Path) -> None:
    """A complete Shannon side-car of an 11 TB-shaped volume with synthetic statistics,
    written chunk by chunk, finalised by the library (decisions, totals, normalisation)."""
    import zarr

    from patchsieve import open_volume
    from patchsieve.config import ShannonPatchFilterConfig
    from patchsieve.filterpass._plan import BlockPlan
    from patchsieve.grid import VolumeGeometry
    from patchsieve.sidecar import CELL_SUM, CELL_SUMSQ, SidecarWriter, chunk_boxes

    src = str(work / "v11t-metadata-only.zarr")
    if not os.path.exists(src):
        zarr.create_array(src, shape=SHAPE_11TB, chunks=CHUNKS, dtype="uint16",
                          dimension_names=("z", "y", "x"))
    vol = open_volume(src)
    geom = VolumeGeometry.from_volume(vol, (16, 64, 64))
    plan = BlockPlan(vol, geom, ["entropy"], ["base"], 0)
    cfg = ShannonPatchFilterConfig(threshold=7.5)
    with SidecarWriter(path) as w:
        meta = w.begin(vol, geom, {"shannon": cfg}, ["entropy"], {"source": "s", "params": "p"},
                       overwrite=True)
        ent = w.array("stats/entropy", geom.region_shape, plan.sidecar_chunks("regions"),
                      "float64", fill_value=np.nan, grow=False)
        cc = plan.sidecar_chunks("cells")
        s = w.array(CELL_SUM, (1, *geom.cell_shape), (1, *cc), "float64", grow=False)
        q = w.array(CELL_SUMSQ, (1, *geom.cell_shape), (1, *cc), "float64", grow=False)
        rng = np.random.default_rng(0)
        for box in chunk_boxes(ent):
            shape = tuple(b.stop - b.start for b in box)
            z = np.arange(box[0].start, box[0].stop)[:, None, None] / geom.grid_shape[0]
            ent[box] = np.round(4.0 + 5.0 * z + rng.normal(0, 1.0, shape), 3)
        for box in chunk_boxes(s, lead=1):
            shape = (1, *(b.stop - b.start for b in box))
            mean = rng.uniform(100, 1000, shape)
            s[(slice(None), *box)] = np.rint(mean * 65536)
            q[(slice(None), *box)] = np.rint((mean ** 2 + 400.0) * 65536)
        meta["status"] = {"stats/entropy": "complete", "cells": "complete",
                          "percentiles": "complete"}
        meta["percentiles"] = {"p0.1": [90.0], "p99.9": [1500.0]}
        w.set_meta(meta)
        w.finalize(vol, {"shannon": cfg}, labels=False)


def apply(work: Path, args: Any) -> tuple[list[dict], dict]:
    """suggest-threshold --apply on a complete side-car of 84 million regions."""
    sc = str(work / "synthetic-11tb.patchsieve.zarr")
    t0 = time.perf_counter()
    make = h.run_with_peak_rss([PY, __file__, "--make-synthetic", sc, "--work", str(work)],
                               interval=0.1)
    if make.returncode != 0:
        raise RuntimeError(make.stderr[-3000:])
    build_s = time.perf_counter() - t0
    res = h.run_with_peak_rss([PY, "-m", "patchsieve.cli", "suggest-threshold", sc,
                               "--background-fraction", "0.6", "--apply", "--json",
                               "-o", str(work / "hist.png")], interval=0.1)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    sug = json.loads(res.stdout[res.stdout.index("{"):])
    details = {"regions": sug["n_regions"], "threshold": sug["threshold"],
               "background_fraction": sug["background_fraction"],
               "suggest_apply_s": round(res.wall_s, 1),
               "suggest_apply_peak_rss_mib": round(res.peak_rss_bytes / 2**20),
               "build_and_finalise_s": round(build_s, 1),
               "build_and_finalise_peak_rss_mib": round(make.peak_rss_bytes / 2**20),
               "sidecar_bytes_on_disk": h_dir_size(sc)}
    rows = [h.summary_row(f"suggest-threshold --apply, {sug['n_regions']:,} regions: peak RSS",
                          round(res.peak_rss_bytes / 2**20), "MiB", baseline="budget 1.5 GiB",
                          baseline_value=1536, target="<=1", better="lower",
                          note=f"{res.wall_s:.0f} s; finalize of the same side-car "
                               f"{make.peak_rss_bytes / 2**20:.0f} MiB")]
    shutil.rmtree(sc, ignore_errors=True)
    return rows, details


def h_dir_size(path: str) -> int:
    total = 0
    for r, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(r, f))
    return total


def costs(work: Path, args: Any) -> tuple[list[dict], dict]:
    """Per-chunk costs per filter and pass / read ratios on a 2 GiB procedural volume."""
    import fsspec
    import zarr

    from patchsieve import compute, open_volume
    from patchsieve.cluster import get_client
    from patchsieve.config import (
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )
    from patchsieve.demo import procedural_url
    from patchsieve.filterpass._blocks import _cell_partials
    from patchsieve.regions import region_block_stats

    url = procedural_url((64, 4096, 4096), CHUNKS, seed=2)
    root = url[len("procedural://"):]
    fs = fsspec.filesystem("procedural")
    arr = zarr.open_array(url, mode="r")
    arr[:16, :256, :256]  # the bank
    keys = [(i % 4, (i // 4) % 16, (i // 64) % 16) for i in range(256)]
    t = time.perf_counter()
    for k in keys:
        fs.cat_file(f"{root}/c/{k[0]}/{k[1]}/{k[2]}")
    serve_ms = (time.perf_counter() - t) / len(keys) * 1e3
    t = time.perf_counter()
    for k in keys[:64]:
        arr[k[0] * 16:(k[0] + 1) * 16, k[1] * 256:(k[1] + 1) * 256, k[2] * 256:(k[2] + 1) * 256]
    read_ms = (time.perf_counter() - t) / 64 * 1e3
    block = arr[:32, :320, :320]
    per = {"serve_ms": serve_ms, "serve_and_decode_ms": read_ms}
    for name, stats in (("entropy", ["entropy"]), ("max_cov0.125", ["max_cov0.125"])):
        region_block_stats(block, patch_size=(16, 64, 64), n=(1, 4, 4), stats=stats)
        t = time.perf_counter()
        for _ in range(10):
            region_block_stats(block, patch_size=(16, 64, 64), n=(1, 4, 4), stats=stats)
        per[f"{name}_block_ms"] = (time.perf_counter() - t) / 10 * 1e3
    chunk = np.ascontiguousarray(block[:16, :256, :256])
    _cell_partials(chunk, (16, 64, 64), 3)
    t = time.perf_counter()
    for _ in range(20):
        _cell_partials(chunk, (16, 64, 64), 3)
    per["cell_partials_ms"] = (time.perf_counter() - t) / 20 * 1e3
    per["client_blocks_per_s"] = _client_rate(work)
    cfgs = {"mean_std": MeanStdPatchFilterConfig(mean_threshold=150.0),
            "shannon": ShannonPatchFilterConfig(threshold=7.5),
            "max": MaxPatchFilterConfig(threshold=400.0)}
    rows, passes = [], {}
    with get_client() as c:
        v = open_volume(url).data
        c.compute(v[:16].sum(dtype="u8")).result()
        t = time.perf_counter()
        c.compute(v.sum(dtype="u8")).result()
        read_s = time.perf_counter() - t
        for name, cfg in cfgs.items():
            out = str(work / f"costs-{name}.patchsieve.zarr")
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            sc = compute(url, {name: cfg}, (16, 64, 64), out, client=c)
            dt = time.perf_counter() - t
            p = sc.attrs["timing"]["pass"]
            passes[name] = {"seconds": dt, "blocks_per_s": p["blocks_per_s"], "tile": p["tile"],
                            "max_tasks_in_flight": p["max_tasks_in_flight"]}
            rows.append(h.summary_row(f"2 GiB procedural pass {name}", dt, "s",
                                      baseline="plain Dask read", baseline_value=read_s,
                                      better="lower", note=f"{p['blocks_per_s']:.0f} blocks/s"))
            shutil.rmtree(out, ignore_errors=True)
    rows.append(h.summary_row("client: block results into the side-car", per["client_blocks_per_s"],
                              "blocks/s", note="BlockLog.put + flushes, stats + cells of "
                              "16x256x256 chunks, one thread"))
    rows.append(h.summary_row("procedural chunk served (2 MiB, encoded)", serve_ms, "ms",
                              baseline="limit", baseline_value=2.0, target="<=1",
                              better="lower"))
    return rows, {"per_chunk": per, "passes": passes, "plain_read_s": read_s}


def _client_rate(work: Path) -> float:
    """Blocks per second the client writes into a side-car (results of 16x256x256 chunks with
    a 16x64x64 patch: 1x4x4 regions of one statistic, 2x1x4x4 cell sums), flushes included."""
    import zarr

    from patchsieve.sidecar import SidecarLock
    from patchsieve.sidecar._writer import BlockLog

    class _Lock(SidecarLock):
        def __init__(self) -> None:
            pass

        def heartbeat(self) -> None:
            pass

    g = zarr.open_group(str(work / "client-rate.zarr"), mode="w")
    grid = (64, 64, 64)
    st = g.create_array("stats", shape=(64, 256, 256), chunks=(64, 28, 28), dtype="f8")
    s = g.create_array("sum", shape=(1, 64, 256, 256), chunks=(1, 64, 28, 28), dtype="f8")
    m1 = g.create_array("m1", shape=grid, chunks=(64, 7, 7), dtype="u1")
    m2 = g.create_array("m2", shape=grid, chunks=(64, 7, 7), dtype="u1")
    a, b = BlockLog({"stats": st}, m1, _Lock()), BlockLog({"sum": s}, m2, _Lock(),
                                                          prefix={"sum": 1})
    vals, cells = np.ones((1, 4, 4)), np.ones((1, 1, 4, 4))
    n = 0
    t = time.perf_counter()
    for ty in range(0, 64, 7):
        for tx in range(0, 64, 7):
            for z in range(16):
                for y in range(ty, min(ty + 7, 64)):
                    for x in range(tx, min(tx + 7, 64)):
                        sl = (slice(z, z + 1), slice(4 * y, 4 * y + 4), slice(4 * x, 4 * x + 4))
                        a.put((z, y, x), sl, {"stats": vals})
                        b.put((z, y, x), sl, {"sum": cells})
                        n += 1
    a.flush()
    b.flush()
    rate = n / (time.perf_counter() - t)
    shutil.rmtree(work / "client-rate.zarr", ignore_errors=True)
    return rate


def cluster(work: Path, args: Any) -> tuple[list[dict], dict]:
    """dask scheduler + 3 dask workers (separate processes), a 64 GiB procedural MeanStd pass,
    one worker SIGKILLed mid-run; compared with an in-process run."""
    import psutil
    from distributed import Client

    from patchsieve import compute
    from patchsieve.config import MeanStdPatchFilterConfig
    from patchsieve.demo import describe_procedural, procedural_url

    url = procedural_url((args.cluster_depth, 16384, 16384), CHUNKS, seed=64)
    info = describe_procedural(url)
    sfile = work / "scheduler.json"
    sfile.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    bindir = Path(PY).parent
    logs = open(work / "cluster-dask.log", "w")
    sched = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1",
                              "--port", "0", "--no-dashboard", "--scheduler-file", str(sfile)],
                             stdout=logs, stderr=subprocess.STDOUT, env=env)
    workers = []
    try:
        deadline = time.monotonic() + 60
        while not sfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        addr = json.loads(sfile.read_text())["address"]
        for i in range(3):
            workers.append(subprocess.Popen(
                [str(bindir / "dask"), "worker", addr, "--nthreads", "1", "--no-nanny",
                 "--name", f"w{i}", "--no-dashboard", "--memory-limit", "4GiB"],
                stdout=logs, stderr=subprocess.STDOUT, env=env))
        out = str(work / "cluster.patchsieve.zarr")
        shutil.rmtree(out, ignore_errors=True)
        with Client(addr, timeout=60, set_as_default=False) as watch:
            watch.wait_for_workers(3, timeout=120)
            run = Run(_cli(url, "mean_std", out, "--scheduler", addr), out,
                      log=str(work / "cluster-run.log"), interval=0.5, poll=2.0)
            sp = psutil.Process(sched.pid)
            sched_rss, in_flight = [], []

            def observe(r: Run) -> bool:
                sched_rss.append(sp.memory_info().rss)
                in_flight.append(sum(len(v) for v in watch.processing().values()))
                return False

            run.until(lambda r: observe(r) or (r.marks and r.marks[-1][1]
                                               >= info["n_chunks"] // 3), args.cluster_timeout_s)
            killed_at = _count(out)
            os.kill(workers[1].pid, signal.SIGKILL)
            run.until(lambda r: observe(r) or r.proc.poll() is not None, args.cluster_timeout_s)
            rc = run.stop(signal.SIGINT)
            wall = run.elapsed()
        ref = str(work / "cluster-ref.patchsieve.zarr")
        shutil.rmtree(ref, ignore_errors=True)
        t = time.perf_counter()
        compute(url, {"mean_std": MeanStdPatchFilterConfig(mean_threshold=150.0)}, (16, 64, 64),
                ref, cluster={"processes": False, "n_workers": 1})
        ref_s = time.perf_counter() - t
        same, diffs = _same_sidecar(out, ref)
        from patchsieve import open_sidecar

        tp = open_sidecar(out).attrs.get("timing", {}).get("pass", {})
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
        sched.terminate()
        sched.wait(timeout=30)
        logs.close()
    details = {"nbytes": info["nbytes"], "chunks": info["n_chunks"], "returncode": rc,
               "wall_s": round(wall, 1), "blocks_when_killed": killed_at,
               "scheduler_peak_rss_mib": round(max(sched_rss) / 2**20),
               "tasks_processing_max_seen_by_scheduler": max(in_flight),
               "pass_attrs": tp, "in_process_run_s": round(ref_s, 1),
               "identical_to_in_process_run": same, "differences": diffs}
    rows = [
        h.summary_row(f"cluster 3 workers, {info['nbytes'] / 2**30:.0f} GiB MeanStd, one worker "
                      "SIGKILLed: side-car identical to one process's", 1.0 if same else 0.0,
                      "yes=1", baseline="required", baseline_value=1, target=">=1",
                      note=f"killed at {killed_at} blocks; {wall / 60:.1f} min vs "
                           f"{ref_s / 60:.1f} min in-process"),
        h.summary_row("cluster run: scheduler peak RSS", round(max(sched_rss) / 2**20), "MiB",
                      baseline="budget", baseline_value=300, target="<=1", better="lower"),
        h.summary_row("cluster run: tasks in flight (most)", tp.get("max_tasks_in_flight"),
                      "tasks", baseline="4 x worker threads", baseline_value=tp.get("window"),
                      target="<=1", better="lower",
                      note=f"scheduler saw at most {max(in_flight)} processing"),
    ]
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(ref, ignore_errors=True)
    return rows, details


def _same_sidecar(a: str, b: str) -> tuple[bool, list[str]]:
    """Every array (but progress/) equal, and the attrs equal but timestamps and timing."""
    import zarr

    from patchsieve.sidecar import iter_chunks

    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    diffs = []

    def arrays(g: Any, prefix: str = "") -> dict[str, Any]:
        out = {prefix + n: arr for n, arr in g.arrays()}
        for n, sub in g.groups():
            if n != "progress":
                out.update(arrays(sub, prefix + n + "/"))
        return out

    aa, bb = arrays(ga), arrays(gb)
    if sorted(aa) != sorted(bb):
        diffs.append(f"keys {sorted(set(aa) ^ set(bb))}")
    for k in set(aa) & set(bb):
        for box, v in iter_chunks(aa[k]):
            if not np.array_equal(v, np.asarray(bb[k][box]), equal_nan=True):
                diffs.append(k)
                break
    skip = {"created", "updated", "timing"}
    ma = {k: v for k, v in ga.attrs["patchsieve"].items() if k not in skip}
    mb = {k: v for k, v in gb.attrs["patchsieve"].items() if k not in skip}
    for k in set(ma) | set(mb):
        if ma.get(k) != mb.get(k):
            diffs.append(f"attrs.{k}")
    return not diffs, diffs


SECTIONS = {"startup": startup, "resume": resume, "wide": wide, "full": full, "apply": apply,
            "costs": costs, "cluster": cluster}


def main() -> None:
    ap = h.bench_argparser(__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(DEFAULT),
                    help=f"comma-separated, from {list(SECTIONS)} (default {','.join(DEFAULT)})")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--startup-s", type=float, default=90.0)
    ap.add_argument("--resume-s", type=float, default=45.0)
    ap.add_argument("--wide-blocks", type=int, default=1500)
    ap.add_argument("--wide-timeout-s", type=float, default=240.0)
    ap.add_argument("--full-depth", type=int, default=512, help="z of the full pass (x 16,384^2)")
    ap.add_argument("--full-timeout-s", type=float, default=3600.0)
    ap.add_argument("--cluster-depth", type=int, default=128)
    ap.add_argument("--cluster-timeout-s", type=float, default=3600.0)
    ap.add_argument("--make-synthetic", default=None, help=argparse_suppress())
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.make_synthetic:
        _synthetic_sidecar(args.make_synthetic, work)
        return
    results = Path(args.results) if args.results else h.RESULTS_DIR
    doc = _load(results)
    sections = dict(doc.get("sections", {}))
    for name in [s for s in args.sections.split(",") if s]:
        if name not in SECTIONS:
            raise SystemExit(f"--sections: unknown {name!r}; choose from {list(SECTIONS)}")
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        print(f"== {name} (load {load0:.1f})", flush=True)
        rows, details = SECTIONS[name](work, args)
        sections[name] = {"rows": rows, "details": details,
                          "seconds": round(time.perf_counter() - t0, 1),
                          "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                          "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        h.print_table(name, rows, ["what", "value", "unit", "baseline_value", "ratio", "target",
                                   "met", "note"])
        print(json.dumps(details, default=str)[:2000], flush=True)
        summary = [r for s in SECTIONS for r in sections.get(s, {}).get("rows", [])]
        h.write_results("scale", {"sections": sections, "summary": summary}, results)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
