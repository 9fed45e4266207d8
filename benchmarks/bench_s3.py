"""The filter pass on S3 vs the same pass on local disk (same data, same cluster, one run each).

An S3 server (moto, ``moto_server`` in a subprocess on 127.0.0.1, so it does not share the
benchmark's GIL) holds a copy of a Hagen-like demo stack written to local disk. Measured in the
same run, on the same LocalCluster:

* baseline: ``compute`` (Shannon 7.5, patch 64) reading the local OME-Zarr, side-car on local disk;
* ``compute`` reading the S3 copy, side-car on local disk;
* ``compute`` reading the S3 copy, side-car written to S3 (beside the source);
* for context, a plain Dask read (sum of every chunk) of each copy.

One untimed warm-up pass runs first (imports, kernel caches), so order does not bias the ratio.

moto is a Python server: its per-request overhead (~ms) dominates small chunks, so the ratio is
an upper bound of what a real object store on a fast network costs. Larger chunks amortise it.

Run: ``python benchmarks/bench_s3.py [--quick]``; prints a table and writes
``benchmarks/results/bench_s3.json``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402

FULL = {"shape": (16, 1024, 1024), "chunks": (1, 512, 512)}
QUICK = {"shape": (4, 512, 512), "chunks": (1, 256, 256)}


def start_moto() -> tuple[subprocess.Popen, str]:
    """``moto_server`` on a free loopback port; returns (process, endpoint URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return proc, url
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    parser = H.bench_argparser(__doc__.splitlines()[0])
    args = parser.parse_args()
    cfg = QUICK if getattr(args, "quick", False) else FULL
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs
    from distributed import Client, LocalCluster

    from patchsieve.compute import compute
    from patchsieve.config import ShannonPatchFilterConfig
    from patchsieve.demo import write_demo_data
    from patchsieve.volume import open_volume

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    proc, endpoint = start_moto()
    opts = {"key": "bench", "secret": "bench", "endpoint_url": endpoint}
    try:
        local = write_demo_data(work / "data", kind="hagen2d", size="small",
                                shapes={"hagen2d": cfg["shape"]},
                                chunks={"hagen2d": cfg["chunks"]})["hagen2d"]
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("bench")
        fs.put(local, "bench/hagen2d.ome.zarr", recursive=True)
        remote = "s3://bench/hagen2d.ome.zarr"
        nbytes = int(open_volume(local).nbytes)
        filt = ShannonPatchFilterConfig(threshold=7.5)
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                          dashboard_address=":0") as cl, Client(cl) as c:
            # warm-up (imports, JIT caches, thread pools), not timed: the first pass would
            # otherwise carry these one-off costs, whichever store it reads
            compute(local, filt, (64, 64), work / "warmup.zarr", client=c)
            t_read_local, _ = timed(lambda: float(open_volume(local).data.sum().compute()))
            t_read_s3, _ = timed(lambda: float(
                open_volume(remote, storage_options=opts).data.sum().compute()))
            t_local, sc_l = timed(lambda: compute(local, filt, (64, 64), work / "local.zarr",
                                                  client=c))
            t_s3, sc_s = timed(lambda: compute(remote, filt, (64, 64), work / "s3src.zarr",
                                               client=c, storage_options=opts))
            t_s3_out, sc_o = timed(lambda: compute(remote, filt, (64, 64),
                                                   "s3://bench/out.patchsieve.zarr", client=c,
                                                   storage_options=opts))
        same = bool((sc_l.filter_out("shannon") == sc_s.filter_out("shannon")).all()
                    and (sc_l.filter_out("shannon") == sc_o.filter_out("shannon")).all())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    mb = nbytes / 1e6
    rows = [
        {"pass": "filter pass, local disk -> local side-car", "s": t_local,
         "MB/s": H.mb_per_s(nbytes, t_local), "x local": 1.0},
        {"pass": "filter pass, S3 source -> local side-car", "s": t_s3,
         "MB/s": H.mb_per_s(nbytes, t_s3), "x local": t_s3 / t_local},
        {"pass": "filter pass, S3 source -> S3 side-car", "s": t_s3_out,
         "MB/s": H.mb_per_s(nbytes, t_s3_out), "x local": t_s3_out / t_local},
        {"pass": "plain dask read (sum), local", "s": t_read_local,
         "MB/s": H.mb_per_s(nbytes, t_read_local), "x local": t_read_local / t_local},
        {"pass": "plain dask read (sum), S3", "s": t_read_s3,
         "MB/s": H.mb_per_s(nbytes, t_read_s3), "x local": t_read_s3 / t_local},
    ]
    title = (f"S3 (moto on 127.0.0.1) vs local disk: {cfg['shape']} float32 "
             f"({mb:.0f} MB), chunks {cfg['chunks']}, Shannon 7.5, patch 64")
    H.print_table(title, rows)
    payload = {
        "data": {"shape": cfg["shape"], "chunks": cfg["chunks"], "bytes": nbytes},
        "rows": rows,
        "identical_decisions": same,
        "summary": [H.summary_row("filter pass S3 -> local side-car vs local disk", t_s3, "s",
                                  baseline="same pass, local disk", baseline_value=t_local,
                                  better="lower"),
                    H.summary_row("filter pass S3 -> S3 side-car vs local disk", t_s3_out, "s",
                                  baseline="same pass, local disk", baseline_value=t_local,
                                  better="lower")],
    }
    path = H.write_results("bench_s3", payload)
    print(f"identical decisions: {same}; results: {path}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
