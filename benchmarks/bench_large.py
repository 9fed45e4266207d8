"""Out-of-core benchmarks on one volume larger than RAM (``make bench-large``; issues 5, 6, 10).

One large volume, ``large-ram`` of ``benchmarks/data.py`` (960x4096x4096 uint16 ZYX, 30 GiB
uncompressed, 17.9 GB of zstd Zarr on disk: more than this 24 GiB machine's RAM), is
generated once into the cache and reused; the free disk is checked first (the run is skipped
with a message when it is too small) and the exact delete command is printed at the end (with a
prompt when stdin is a terminal). ``large-2g`` (64x4096x4096, 2 GiB) is the small reference
volume of every "flat in volume size" ratio. Everything is measured in one run:

1. plain Dask read of each volume (sum of every chunk; threaded scheduler, and the default
   patchsieve LocalCluster that the filter pass uses): median time, throughput, peak RSS;
2. ``patchsieve compute`` as a CLI subprocess (MeanStd and Shannon, patch 16x64x64) on both
   volumes: peak RSS of the whole job (client + workers) on large-ram vs large-2g (target
   <= 1.2) and the pass time / the plain read on the same default cluster (targets <= 2.5
   MeanStd, <= 4 Shannon). Pass time = the job's wall time minus its start-up, measured as the
   same job on a tiny 16x256x256 volume (interpreter, imports, cluster start and close; median
   of ``--repeat``); the gross ratio is reported too;
3. ``patchsieve.PatchDataset`` on each volume with its completed MeanStd side-car, num_workers
   0, in a fresh subprocess per volume: time to first batch (target < 1 s) and peak RSS over
   ``--batches`` batches of 64 on large-ram vs large-2g (target <= 1.2).

``--quick`` swaps both volumes for small ones of the same generator (a smoke run of the code
path in about a minute; its numbers mean nothing). ``--large`` is accepted for symmetry with the
other scripts (``run_all.py --large`` passes it): the out-of-core set is this script's only mode.

Usage::

    nice -n 19 python benchmarks/bench_large.py                 # the out-of-core set
    python benchmarks/bench_large.py --quick                     # smoke run
    python benchmarks/bench_large.py --pass-repeat 3             # median of 3 passes per volume
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402
import data as D  # noqa: E402
from bench_baselines import dask_read  # noqa: E402
from bench_compute import TARGETS as PASS_TARGETS  # noqa: E402

PATCH = (16, 64, 64)
BATCH = 64
#: CLI filter arguments (the thresholds of bench_compute's configs)
FILTERS: dict[str, list[str]] = {
    "meanstd": ["--filter", "mean_std", "--threshold", "150", "--std-threshold", "20"],
    "shannon": ["--filter", "shannon", "--threshold", "7.5"],
}
#: Environment variable set by run_all.py: it makes the delete offer itself, once, at the end.
NO_OFFER_ENV = "PATCHSIEVE_BENCH_NO_DELETE_OFFER"


def startup_spec() -> D.Spec:
    """A tiny volume of the same generator: the CLI job on it measures the job's start-up."""
    return D.SPECS["large-2g"].resized("large-tiny", (16, 256, 256))


def volumes(quick: bool) -> tuple[D.Spec, D.Spec]:
    """``(big, ref)``: large-ram and large-2g, or two small volumes of the same generator."""
    big, ref = D.SPECS["large-ram"], D.SPECS["large-2g"]
    if quick:
        return (big.resized("large-ram-quick", (64, 512, 512)),
                ref.resized("large-2g-quick", (32, 512, 512)))
    return big, ref


def sidecar_path(ds: D.Dataset, filt: str) -> Path:
    """Where the benchmark keeps ``ds``'s side-car for ``filt`` (inside the dataset's folder, so
    deleting the dataset deletes it too; never inside the source store)."""
    return ds.root / f"bench_large_{filt}_{'x'.join(map(str, PATCH))}.patchsieve.zarr"


# ----------------------------------------------------------------------------- (1) read
def read_section(ds: D.Dataset, repeat: int) -> dict[str, Any]:
    """Plain Dask read of ``ds`` with threads and with the default patchsieve LocalCluster."""
    from patchsieve.cluster import get_client

    out = {"threads": dask_read(ds.array_path, "threads", repeat=repeat)}
    with get_client() as client:  # the CLI job's default cluster (same settings)
        out["default_cluster"] = dask_read(ds.array_path, "distributed", repeat=repeat,
                                           client=client)
    return out


# ----------------------------------------------------------------------------- (2) compute
def compute_job(ds: D.Dataset, filt: str, repeat: int, timeout: float) -> dict[str, Any]:
    """``patchsieve compute`` on ``ds`` as a subprocess, ``repeat`` times from scratch.

    Returns wall times (start-up included), the median, and the peak tree RSS (max over runs).
    The last run's side-car is kept (:func:`sidecar_path`) for the dataset section.
    """
    out = sidecar_path(ds, filt)
    cmd = [sys.executable, "-m", "patchsieve.cli", "-q", "compute", str(ds.zarr_path),
           *FILTERS[filt], "--patch", ",".join(map(str, PATCH)), "-o", str(out),
           "--overwrite", "--no-progress", "--json"]
    walls, peaks = [], []
    summary: dict[str, Any] = {}
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)  # a complete side-car would be reused: start clean
        res = H.run_with_peak_rss(cmd, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"patchsieve compute failed on {ds.spec.name} ({filt}), exit "
                               f"{res.returncode}:\n{res.stderr[-3000:]}")
        walls.append(res.wall_s)
        peaks.append(res.peak_rss_bytes)
        try:
            summary = json.loads(res.stdout)
        except ValueError:
            summary = {"stdout": res.stdout[-500:]}
    walls_sorted = sorted(walls)
    return {"command": " ".join(cmd), "wall_s_runs": walls,
            "wall_s": walls_sorted[len(walls) // 2], "peak_rss_bytes": max(peaks),
            "peak_rss_bytes_runs": peaks, "sidecar": str(out), "result": summary}


def ensure_sidecar(ds: D.Dataset, filt: str) -> Path:
    """The completed side-car of :func:`compute_job`, computed with ``patchsieve.compute`` when
    it is missing or incomplete (e.g. ``--skip-compute``)."""
    import patchsieve

    path = sidecar_path(ds, filt)
    try:
        patchsieve.open_sidecar(path)
        return path
    except patchsieve.PatchsieveError:
        pass
    cfg = (patchsieve.MeanStdPatchFilterConfig(mean_threshold=150.0, std_threshold=20.0)
           if filt == "meanstd" else patchsieve.ShannonPatchFilterConfig(threshold=7.5))
    patchsieve.compute(str(ds.zarr_path), {filt: cfg}, PATCH, path, overwrite=True)
    return path


# ----------------------------------------------------------------------------- (3) dataset
def probe_dataset(url: str, sidecar: str, batches: int, repeat: int, threads: int) -> dict:
    """In this (fresh) process: first-batch times and a ``batches``-batch run (num_workers 0).

    Called through ``--probe`` by :func:`dataset_job`, which measures the peak RSS of the
    process from outside.
    """
    import psutil

    H.set_threads(threads)
    import torch  # noqa: F401 - imported before the clock starts (the loader needs it)

    import patchsieve

    proc = psutil.Process()
    rss_imports = proc.memory_info().rss
    firsts, constructs = [], []
    for _ in range(repeat):  # PatchDataset construction (side-car open + plan) + first batch
        t0 = time.perf_counter()
        ds = patchsieve.PatchDataset(url, sidecar=sidecar, seed=0)
        constructs.append(time.perf_counter() - t0)
        it = iter(ds.loader(batch_size=BATCH, num_workers=0))
        next(it)
        firsts.append(time.perf_counter() - t0)
        del it, ds
    ds = patchsieve.PatchDataset(url, sidecar=sidecar, seed=0)
    loader = ds.loader(batch_size=BATCH, num_workers=0)
    n = k = epochs = 0
    t0 = time.perf_counter()
    while k < batches:  # the same number of batches on every volume (small ones: more epochs)
        epochs += 1
        before = k
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            n += int(x.shape[0])
            k += 1
            if k >= batches:
                break
        if k == before:
            break
    run_s = time.perf_counter() - t0
    return {"first_batch_s_runs": firsts, "first_batch_s_cold": firsts[0],
            "first_batch_s": sorted(firsts)[len(firsts) // 2], "construct_s_runs": constructs,
            "patches": n, "batches": k, "epochs": epochs,
            "run_s": run_s, "patches_per_s": n / run_s if run_s > 0 else None,
            "patches_per_epoch": len(ds), "rss_after_imports_bytes": rss_imports,
            "rss_end_bytes": proc.memory_info().rss, "cache_bytes": getattr(ds, "cache_bytes", None),
            "threads": H.thread_settings()}


def dataset_job(ds: D.Dataset, sidecar: Path, batches: int, repeat: int, threads: int,
                timeout: float) -> dict[str, Any]:
    """:func:`probe_dataset` in a subprocess; adds its peak RSS (the whole process)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", str(ds.zarr_path),
           str(sidecar), "--batches", str(batches), "--repeat", str(repeat),
           "--threads", str(threads)]
    res = H.run_with_peak_rss(cmd, timeout=timeout,
                              env={**os.environ, "TQDM_DISABLE": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"dataset probe failed on {ds.spec.name}, exit {res.returncode}:\n"
                           f"{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(peak_rss_bytes=res.peak_rss_bytes, wall_s=res.wall_s, command=" ".join(cmd))
    return out


# ----------------------------------------------------------------------------- rows
def _mib(b: float) -> float:
    return b / 2**20


def build_rows(big: D.Dataset, ref: D.Dataset, reads: dict, jobs: dict, dsets: dict,
               startup_s: float = 0.0) -> list:
    """The summary rows (``_harness.summary_row``) of the three sections.

    The pass / read rows compare the job's wall time minus ``startup_s`` (the same job on a tiny
    volume: interpreter, imports, LocalCluster start and close) with the read on an already
    started cluster; the gross wall time is in the note.
    """
    rows = []
    bn, rn = big.spec.name, ref.spec.name
    for name in (bn, rn):
        if name not in reads:
            continue
        for sched, r in reads[name].items():
            rows.append(H.summary_row(
                f"(1) plain Dask read {name} ({sched})", r["MBps"], "MB/s",
                note=f"median {r['median_s']:.1f} s of {[round(x, 1) for x in r['runs_s']]}; "
                     f"peak RSS {r['peak_rss_mib']:.0f} MiB"))
        if name == bn:
            t = reads[name]["threads"]
            rows.append(H.summary_row(f"(1) plain Dask read {name}: peak RSS (threads)",
                                      t["peak_rss_mib"], "MiB", better="lower",
                                      note=f"volume {big.spec.nbytes / 2**30:.0f} GiB"))
    for filt in FILTERS:
        jb, jr = jobs.get((bn, filt)), jobs.get((rn, filt))
        if jb and jr:
            rows.append(H.summary_row(
                f"(2) compute {filt}: peak RSS whole job, {bn} vs {rn}",
                _mib(jb["peak_rss_bytes"]), "MiB", baseline=f"same job on {rn}",
                baseline_value=_mib(jr["peak_rss_bytes"]), target="<=1.2", better="lower"))
        for name, j in ((bn, jb), (rn, jr)):
            if not j or name not in reads:
                continue
            read_s = reads[name]["default_cluster"]["median_s"]
            nbytes = (big if name == bn else ref).spec.nbytes
            net = max(j["wall_s"] - startup_s, 1e-9)
            rows.append(H.summary_row(
                f"(2) compute {filt} on {name}: pass (job wall - start-up) / plain read", net,
                "s", baseline="plain Dask read, default LocalCluster", baseline_value=read_s,
                target=PASS_TARGETS[filt], better="lower",
                note=f"{H.mb_per_s(nbytes, net):.0f} MB/s; job wall {j['wall_s']:.1f} s "
                     f"(runs {[round(x, 1) for x in j['wall_s_runs']]}) - start-up "
                     f"{startup_s:.1f} s; gross ratio {j['wall_s'] / read_s:.2f}"))
    db, dr = dsets.get(bn), dsets.get(rn)
    if db:
        rows.append(H.summary_row(
            f"(3) PatchDataset first batch nw0 on {bn}", db["first_batch_s"], "s",
            baseline="target 1 s", baseline_value=1.0, target="<1", better="lower",
            note=f"median of {[round(x, 3) for x in db['first_batch_s_runs']]}, of which "
                 f"PatchDataset() {[round(x, 3) for x in db.get('construct_s_runs', [])]}"
                 + (f"; {rn}: {dr['first_batch_s']:.3f} s" if dr else "")))
    if db and dr:
        rows.append(H.summary_row(
            f"(3) PatchDataset peak RSS nw0 ({db['batches']} batches of {BATCH}), {bn} vs {rn}",
            _mib(db["peak_rss_bytes"]), "MiB", baseline=f"same on {rn}",
            baseline_value=_mib(dr["peak_rss_bytes"]), target="<=1.2", better="lower",
            note=f"after imports {_mib(db['rss_after_imports_bytes']):.0f} MiB"))
        rows.append(H.summary_row(
            f"(3) PatchDataset patches/s nw0 ({db['batches']} batches) on {bn}",
            db["patches_per_s"], "patches/s", baseline=f"same on {rn}",
            baseline_value=dr["patches_per_s"]))
    return rows


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the out-of-core set; print the table; write ``results/bench_large.json``."""
    ap = H.bench_argparser(__doc__.split("\n")[0])
    ap.add_argument("--pass-repeat", type=int, default=1,
                    help="filter-pass jobs per volume and filter (median; default 1: a pass on "
                         "the 30 GiB volume takes minutes)")
    ap.add_argument("--batches", type=int, default=200,
                    help="batches of 64 read by the dataset RSS probe")
    ap.add_argument("--filters", default=",".join(FILTERS), help="subset of meanstd,shannon")
    ap.add_argument("--skip-read", action="store_true", help="skip section (1)")
    ap.add_argument("--skip-compute", action="store_true", help="skip section (2)")
    ap.add_argument("--skip-dataset", action="store_true", help="skip section (3)")
    ap.add_argument("--probe", nargs=2, metavar=("URL", "SIDECAR"), help=argparse_suppress())
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe_dataset(args.probe[0], args.probe[1], args.batches, args.repeat,
                                       args.threads), default=str))
        return 0
    filters = [f for f in args.filters.split(",") if f]
    bad = sorted(set(filters) - set(FILTERS))
    if bad:
        ap.error(f"--filters {bad}: choose from {sorted(FILTERS)}")
    threads = H.set_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    t_start = time.perf_counter()
    big_spec, ref_spec = volumes(args.quick)
    payload: dict[str, Any] = {"quick": args.quick, "patch": PATCH, "batch": BATCH,
                               "threads": threads, "skipped": [], "args": vars(args)}

    # disk first: nothing is generated when the big volume cannot fit
    problem = D.disk_problem(big_spec, args.cache)
    if problem:
        msg = f"SKIP the out-of-core set: {problem}"
        print(msg, flush=True)
        payload["skipped"].append({"dataset": big_spec.name, "reason": problem})
        payload["summary"] = []
        print("results:", H.write_results("bench_large", payload, args.results))
        return 0
    t0 = time.perf_counter()
    ref = D.ensure(ref_spec, args.cache)
    big = D.ensure(big_spec, args.cache)
    payload["data_prep_s"] = time.perf_counter() - t0
    payload["datasets"] = [big.info(), ref.info()]
    print(f"volumes: {big.spec.name} {big.spec.nbytes / 2**30:.1f} GiB "
          f"({payload['datasets'][0]['disk_bytes'] / 1e9:.1f} GB on disk), "
          f"{ref.spec.name} {ref.spec.nbytes / 2**30:.1f} GiB; ready in "
          f"{payload['data_prep_s']:.0f} s", flush=True)
    timeout = 3 * 3600.0

    reads: dict[str, Any] = {}
    if not args.skip_read:
        for ds in (ref, big):
            t0 = time.perf_counter()
            reads[ds.spec.name] = read_section(ds, args.repeat)
            print(f"(1) read {ds.spec.name}: "
                  f"{ {k: round(v['median_s'], 2) for k, v in reads[ds.spec.name].items()} } s "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    jobs: dict[tuple[str, str], Any] = {}
    startup_s = 0.0
    if not args.skip_compute:
        tiny = D.ensure(startup_spec(), args.cache)
        st = compute_job(tiny, filters[0], max(1, args.repeat), timeout)
        startup_s = st["wall_s"]
        payload["compute_startup"] = {"dataset": tiny.info(), **st}
        print(f"(2) compute start-up (job on {tiny.spec.name}): {startup_s:.1f} s", flush=True)
        for filt in filters:
            for ds in (ref, big):
                j = compute_job(ds, filt, args.pass_repeat, timeout)
                jobs[(ds.spec.name, filt)] = j
                print(f"(2) compute {filt} on {ds.spec.name}: {j['wall_s']:.1f} s, peak RSS "
                      f"{_mib(j['peak_rss_bytes']):.0f} MiB", flush=True)
    dsets: dict[str, Any] = {}
    if not args.skip_dataset:
        for ds in (ref, big):
            sc = ensure_sidecar(ds, "meanstd")
            d = dataset_job(ds, sc, args.batches, args.repeat, args.threads, timeout)
            dsets[ds.spec.name] = d
            print(f"(3) dataset on {ds.spec.name}: first batch {d['first_batch_s']:.3f} s, "
                  f"peak RSS {_mib(d['peak_rss_bytes']):.0f} MiB, "
                  f"{d['patches_per_s'] or 0:.0f} patches/s", flush=True)

    rows = build_rows(big, ref, reads, jobs, dsets, startup_s)
    payload.update(reads=reads, compute={f"{k[0]}/{k[1]}": v for k, v in jobs.items()},
                   dataset=dsets, summary=rows, wall_s=time.perf_counter() - t_start,
                   disk_free_bytes_after=shutil.disk_usage(big.root).free)
    H.print_table(f"bench_large: out-of-core set ({big.spec.name} vs {ref.spec.name}, patch "
                  f"{PATCH})", rows,
                  ["what", "value", "unit", "baseline_value", "ratio", "target", "met", "note"])
    print("results:", H.write_results("bench_large", payload, args.results))
    if not os.environ.get(NO_OFFER_ENV):
        D.offer_delete([big.spec.name], args.cache, interactive=None if not args.quick else False)
    return 0


def argparse_suppress() -> str:
    """``argparse.SUPPRESS`` (the ``--probe`` flag is internal)."""
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
