"""The sampler at 10**8 regions and on object storage (issue 17).

Three measurements, each against a baseline of the same run:

1. **Start-up and plan state vs the region count.** Complete side-cars with synthetic
   statistics (``scale_sidecar.py``) over metadata-only volumes: one sample, 16x64x64 patches,
   chunks 16x256x256, region grids 100^3 (10**6), 200x250x200 (10**7) and 400x500x500 (10**8).
   A fresh process imports patchsieve, then times ``PatchDataset(sidecar=...)`` and the first
   batch of 64 at num_workers 0; a second fresh process measures the memory of the same steps
   (tracemalloc peak: every Python allocation, plan state and chunk cache; the sampler's own
   arrays, ``sampler.state_bytes``; RSS growth). Baselines: the 2 s / 100 MB budgets, the
   10**6 side-car (flatness), and the code before this change (``--baseline-rev``, default the
   merge base with ``main``), run from a ``git archive`` of its ``src`` (10**6 and 10**7;
   ``--baseline-1e8`` also tries 10**8).
2. **Object storage, 50 ms per request.** The 2D stack ``ref2d`` (79x1024x1024 float32, chunks
   1x512x512, the demo's ``hagen2d`` geometry), Max filter, patch 64x64: patches/s of two full
   epochs with ``num_workers=2`` (fork, persistent workers, batches of 64 cut in the dataset)
   from a real moto S3 server whose every request waits 50 ms (``latency_s3.py``), against the
   same from the local disk. Epoch 2 (steady state) is the headline; epoch 1 includes start-up.
3. **Object storage, 0 ms**, against *today's* local rate (the baseline revision, local disk).
   The moto server's own serving rate (concurrent GETs of 1 MiB objects) is measured too: it
   bounds what any client can read from it on this machine.

Usage::

    python benchmarks/bench_sampler_scale.py              # all three
    python benchmarks/bench_sampler_scale.py --scale-only # 1.
    python benchmarks/bench_sampler_scale.py --s3-only    # 2. and 3.
    python benchmarks/bench_sampler_scale.py --quick      # 10**6 and 10**7, 12 slices of ref2d
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

GRIDS = {"1e6": (100, 100, 100), "1e7": (200, 250, 200), "1e8": (400, 500, 500)}
PATCH, CHUNKS = (16, 64, 64), (16, 256, 256)
BATCH = 64
EPOCHS = 4  # epoch 1: start-up; 2: the first steady epoch; 3-4: warm (persistent workers)


# ----------------------------------------------------------------------------- children
def _child_start(sidecar: str, memory: bool) -> None:
    """Fresh process: construct + first batch at num_workers 0 (time, or memory)."""
    import tracemalloc

    import psutil
    import torch  # noqa: F401 - imported before the clock, as a training script has it

    import patchsieve.config  # noqa: F401
    from patchsieve.dataset import PatchDataset

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    if memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    ds = PatchDataset(sidecar=sidecar, seed=0)
    t1 = time.perf_counter()
    batch = next(iter(ds.loader(batch_size=BATCH)))
    t2 = time.perf_counter()
    out = {"construct_s": t1 - t0, "first_batch_s": t2 - t1, "total_s": t2 - t0,
           "batch": list(batch.shape), "patches_per_epoch": len(ds),
           "rss_growth_mib": (proc.memory_info().rss - rss0) / 2**20}
    if memory:
        cur, peak = tracemalloc.get_traced_memory()
        out.update(traced_peak_mib=peak / 2**20, traced_current_mib=cur / 2**20)
    state = getattr(ds.sampler, "state_bytes", None)
    out["sampler_state_mib"] = state / 2**20 if state is not None else None
    print(json.dumps(out))


def _child_throughput(url: str, sidecar: str, storage_options: str, num_workers: int) -> None:
    """Fresh process: patches/s of two epochs (persistent workers, batches cut in the dataset)."""
    import torch  # noqa: F401

    from patchsieve.dataset import PatchDataset

    so = json.loads(storage_options) or None
    ds = PatchDataset(url, sidecar=sidecar, seed=0, batch_size=BATCH, storage_options=so)
    kw = {"num_workers": num_workers}
    if num_workers:
        kw.update(multiprocessing_context="fork", persistent_workers=True)
    loader = ds.loader(**kw)
    epochs = []
    for _ in range(EPOCHS):
        t0, n, first = time.perf_counter(), 0, None
        for b in loader:
            n += b.shape[0]
            if first is None:
                first = time.perf_counter() - t0
        epochs.append({"patches": n, "s": time.perf_counter() - t0, "first_batch_s": first})
    print(json.dumps({"epochs": epochs}))


def _run_child(args: list[str], src: str | None, timeout: float = 1800) -> dict | None:
    env = dict(os.environ, TQDM_DISABLE="1")
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    try:
        res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                             env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def baseline_src(rev: str, tmp: Path) -> str:
    """``src`` of revision ``rev`` (the code before this change), extracted into ``tmp``."""
    repo = h.REPO_ROOT
    if rev == "merge-base":
        rev = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=repo, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return str(tmp / "src")


# ----------------------------------------------------------------------------- 1. scale
def ensure_scale_sidecar(name: str, cache: Path) -> str:
    from scale_sidecar import write_scale_sidecar, write_scale_volume

    root = cache / f"scale-{name}"
    sc = root / "volume.patchsieve.zarr"
    if (root / "done").exists():
        return str(sc)
    root.mkdir(parents=True, exist_ok=True)
    src = write_scale_volume(root, GRIDS[name], PATCH, CHUNKS)
    write_scale_sidecar(src, PATCH, sc, axes="ZYX")
    (root / "done").write_text("ok")
    return str(sc)


def bench_scale(args, old_src: str | None) -> tuple[list, dict]:
    cache = Path(args.cache or os.environ.get("PATCHSIEVE_BENCH_CACHE") or h.REPO_ROOT / ".bench-cache")
    out: dict = {}
    for name in args.grids:
        t0 = time.perf_counter()
        sc = ensure_scale_sidecar(name, cache)
        times = [_run_child(["--child-start", sc, "0"], None) for _ in range(args.repeat)]
        mem = _run_child(["--child-start", sc, "1"], None)
        entry = {"sidecar": sc, "regions": int(np.prod(GRIDS[name])), "write_s": time.perf_counter() - t0,
                 "runs": times, "memory": mem}
        ok = [t for t in times if t and "error" not in t]
        entry["total_s"] = float(np.median([t["total_s"] for t in ok])) if ok else None
        entry["construct_s"] = float(np.median([t["construct_s"] for t in ok])) if ok else None
        entry["first_batch_s"] = float(np.median([t["first_batch_s"] for t in ok])) if ok else None
        if old_src and (name != "1e8" or args.baseline_1e8):
            entry["baseline_time"] = _run_child(["--child-start", sc, "0"], old_src, timeout=900)
            entry["baseline_memory"] = _run_child(["--child-start", sc, "1"], old_src, timeout=1800)
        out[name] = entry
        print(name, {k: v for k, v in entry.items() if k not in ("runs",)}, flush=True)
    return _scale_rows(out), out


def _scale_rows(out: dict) -> list:
    rows = []
    big = out.get("1e8") or out[max(out, key=lambda k: out[k]["regions"])]
    tag = f"{big['regions']:.0e} regions"
    mem = big.get("memory") or {}
    rows.append(h.summary_row(f"construct + first batch nw0, {tag} (16x64x64, one sample)",
                              big["total_s"], "s", baseline="2 s budget", baseline_value=2.0,
                              target="<=1", better="lower",
                              note=f"construct {big['construct_s']:.2f} s + batch "
                                   f"{big['first_batch_s']:.2f} s"))
    rows.append(h.summary_row(f"memory of construct + first batch, {tag} (tracemalloc peak)",
                              mem.get("traced_peak_mib"), "MiB", baseline="100 MB budget",
                              baseline_value=100e6 / 2**20, target="<=1", better="lower",
                              note=f"sampler arrays {mem.get('sampler_state_mib', 0):.1f} MiB, RSS growth "
                                   f"{mem.get('rss_growth_mib', 0):.0f} MiB"))
    small = out.get("1e6")
    if small and small is not big:
        rows.append(h.summary_row(f"construct + first batch {tag} / 10**6 regions", big["total_s"], "s",
                                  baseline="same at 10**6", baseline_value=small["total_s"],
                                  better="lower", note="the start-up count of the decisions is "
                                                       "one pass (about 0.3 s per 10**8 regions)"))
        sm = (small.get("memory") or {}).get("traced_peak_mib")
        rows.append(h.summary_row(f"memory {tag} / 10**6 regions", mem.get("traced_peak_mib"), "MiB",
                                  baseline="same at 10**6", baseline_value=sm, better="lower",
                                  note="tiles (at most 32768) and a bounded decisions cache"))
    for e in out.values():
        bt, bm = e.get("baseline_time") or {}, e.get("baseline_memory") or {}
        if "total_s" in bt:
            rows.append(h.summary_row(f"construct + first batch {e['regions']:.0e} regions", e["total_s"],
                                      "s", baseline="before (whole arrays, full plan)",
                                      baseline_value=bt["total_s"], better="lower"))
        if "traced_peak_mib" in bm:
            rows.append(h.summary_row(f"memory construct + first batch {e['regions']:.0e} regions",
                                      (e.get("memory") or {}).get("traced_peak_mib"), "MiB",
                                      baseline="before (whole arrays, full plan)",
                                      baseline_value=bm["traced_peak_mib"], better="lower"))
        elif bm.get("error") or bt.get("error"):
            rows.append(h.summary_row(f"before, {e['regions']:.0e} regions", None, "s",
                                      note=f"baseline failed: {bm.get('error') or bt.get('error')}"))
    return rows


# ----------------------------------------------------------------------------- 2./3. S3
def moto_ceiling(s3) -> float:
    """Concurrent GETs of 1 MiB objects per second that the moto server delivers here."""
    from concurrent.futures import ThreadPoolExecutor

    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options)
    if not fs.exists("ceiling"):
        fs.mkdir("ceiling")
    blob = os.urandom(1 << 20)
    for i in range(32):
        fs.pipe(f"ceiling/k{i}", blob)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: fs.cat(f"ceiling/k{i % 32}"), range(128)))
    return 128 / (time.perf_counter() - t0)


def _rate(res: dict | None, epochs: tuple[int, ...]) -> float | None:
    """Patches/s over the given epochs (0-based) of one child run."""
    if not res or "epochs" not in res:
        return None
    e = [res["epochs"][i] for i in epochs]
    return sum(x["patches"] for x in e) / sum(x["s"] for x in e)


def bench_s3(args, old_src: str | None) -> tuple[list, dict]:
    import data as bench_data
    from bench_dataset import _sidecar
    from latency_s3 import DelayedMotoServer

    from patchsieve.config import MaxPatchFilterConfig

    spec = bench_data.SPECS["ref2d"]
    if args.quick:
        spec = spec.resized("ref2d-12", (12, 1024, 1024))
    ds = bench_data.ensure(spec, args.cache)
    sc = ds.root / "bench_dataset_64x64.patchsieve.zarr"
    _sidecar(ds, MaxPatchFilterConfig(threshold=300.0, coverage=0.25), (64, 64), sc)
    url, out = str(ds.zarr_path), {"dataset": ds.info()}
    nw = 2

    def runs(u: str, so: dict | None, src: str | None) -> list:
        return [_run_child(["--child-throughput", u, str(sc), json.dumps(so or {}), str(nw)], src)
                for _ in range(args.repeat)]

    out["local"] = runs(url, None, None)
    if old_src:
        out["local_before"] = runs(url, None, old_src)
    for delay in (0.05, 0.0):
        with DelayedMotoServer(delay) as s3:
            s3url = s3.upload(url, "bench", Path(url).name)
            key = f"s3_{int(delay * 1000)}ms"
            out[key] = runs(s3url, s3.storage_options, None)
            assert s3.stats is not None
            out[key + "_server"] = {"requests": s3.stats.requests,
                                    "max_in_flight": s3.stats.max_in_flight}
            if delay == 0.0:
                out["moto_get_1mib_per_s"] = moto_ceiling(s3)
    return _s3_rows(out, nw), out


def _med(results: list, epochs: tuple[int, ...]) -> float | None:
    vals = [r for r in (_rate(x, epochs) for x in results) if r is not None]
    return float(np.median(vals)) if vals else None


def _s3_rows(out: dict, nw: int) -> list:
    rows = []
    ceiling = f"moto serves {out.get('moto_get_1mib_per_s', 0):.0f} GET/s of 1 MiB here"
    labels = (((1,), "epoch 2"), ((2, 3), "epochs 3-4 (warm)"), ((0,), "epoch 1 (start-up incl.)"))
    for ep, label in labels:
        rows.append(h.summary_row(f"ref2d nw{nw} S3 50 ms/request patches/s, {label}",
                                  _med(out["s3_50ms"], ep), "patches/s", baseline="local disk",
                                  baseline_value=_med(out["local"], ep), target=">=0.5"))
    for ep, label in labels:
        rows.append(h.summary_row(f"ref2d nw{nw} S3 0 ms patches/s, {label}", _med(out["s3_0ms"], ep),
                                  "patches/s", baseline="local disk, code before this change",
                                  baseline_value=_med(out.get("local_before", []), ep),
                                  target=">=0.9", note=ceiling))
    rows.append(h.summary_row(f"ref2d nw{nw} S3 50 ms/request patches/s, epoch 1 (every chunk read)",
                              _med(out["s3_50ms"], (0,)), "patches/s", baseline="S3 0 ms",
                              baseline_value=_med(out["s3_0ms"], (0,)), target=">=0.7",
                              note="latency hidden: serial requests would add 50 ms x chunks"))
    for ep, label in labels:
        rows.append(h.summary_row(f"ref2d nw{nw} local patches/s, {label}", _med(out["local"], ep),
                                  "patches/s", baseline="code before this change",
                                  baseline_value=_med(out.get("local_before", []), ep),
                                  target=">=0.9"))
    return rows


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child-start":
        _child_start(sys.argv[2], sys.argv[3] == "1")
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":  # rebuild the rows of a results file
        path = Path(sys.argv[2])
        payload = json.loads(path.read_text())
        rows = (_scale_rows(payload["scale"]) if "scale" in payload else []) + (
            _s3_rows(payload["s3"], 2) if "s3" in payload else [])
        payload["summary"] = rows
        path.write_text(json.dumps(payload, indent=1, default=str))
        h.print_table("bench_sampler_scale", rows,
                      ["what", "value", "unit", "baseline_value", "ratio", "target", "met"])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "--child-throughput":
        _child_throughput(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = h.bench_argparser(__doc__.splitlines()[0])
    ap.add_argument("--scale-only", action="store_true")
    ap.add_argument("--s3-only", action="store_true")
    ap.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--baseline-rev", default="merge-base",
                    help="git revision of the 'before' code (default: merge base with main); "
                         "'none' skips it")
    ap.add_argument("--baseline-1e8", action="store_true",
                    help="also run the before code on 10**8 regions (about 10 GB, minutes)")
    args = ap.parse_args()
    if args.quick and args.grids == list(GRIDS):
        args.grids = ["1e6", "1e7"]
    threads = h.set_threads(args.threads)
    payload: dict = {"threads": threads}
    rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        old = None if args.baseline_rev == "none" else baseline_src(args.baseline_rev, Path(tmp))
        payload["baseline_rev"] = args.baseline_rev
        if not args.s3_only:
            r, payload["scale"] = bench_scale(args, old)
            rows += r
        if not args.scale_only:
            r, payload["s3"] = bench_s3(args, old)
            rows += r
    payload["summary"] = rows
    h.print_table("bench_sampler_scale", rows,
                  ["what", "value", "unit", "baseline_value", "ratio", "target", "met"])
    print("results:", h.write_results("sampler_scale", payload, args.results))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
