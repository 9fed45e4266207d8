"""PatchDataset throughput vs one-zarr-read-per-patch, epoch time vs a plain Dask read (issue 6).

Measured in one run, on the cached benchmark volumes (``benchmarks/data.py``):

- ``ref2d`` (79x1024x1024 float32, chunks 1x512x512), patch 64x64, Max filter;
- ``large-2g`` (64x4096x4096 uint16 ZYX, chunks 32x256x256 = 4 MiB), patch 16x64x64, Max
  filter (``--quick``: ``vol3d``, 2x64x512x512 CZYX, channel 1).

For each: patches/s of ``PatchDataset`` at num_workers 0 and 2 (fork and spawn), with single
patches collated by the DataLoader (``loader(batch_size=64, collate_fn=default_collate)``, what a
plain ``DataLoader(ds, batch_size=64)`` does) and with batches cut in the dataset
(``PatchDataset(batch_size=64)``; ``ds.loader(batch_size=64)`` does the same), against the
baseline of one zarr read per patch for the same plan (medians of --repeat, per epoch). Every
loader runs two full ``per_epoch`` epochs with persistent workers: epoch 1 includes the worker
start-up (reported apart as the time to its first batch), epoch 2 is the steady state. Epoch time
at num_workers 2 against the time to read the whole volume once with plain Dask (threads);
distinct chunks per batch for the default shuffle window vs plan order; time to first batch
(num_workers 0, completed side-car, dataset construction included); peak RSS of a fresh process
that builds the dataset and reads ``--rss-patches`` patches from ``large-2g`` (2 GiB) vs
``large-16g`` (16 GiB), same patch size and filter (``--rss``); optionally (``--careamics``)
CAREamics' own in-memory dataset with the same filter.

Usage::

    python benchmarks/bench_dataset.py            # both volumes
    python benchmarks/bench_dataset.py --quick    # 12 slices of ref2d, vol3d
    python benchmarks/bench_dataset.py --rss      # + peak RSS 2 GiB vs 16 GiB volume
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import data as bench_data  # noqa: E402

BATCH = 64


def _sidecar(ds, cfg, patch, out: Path):
    from distributed import Client, LocalCluster

    from patchsieve.compute import compute
    from patchsieve.sidecar import open_sidecar

    try:
        return open_sidecar(out)
    except Exception:  # absent or incomplete: compute it once, cached beside the volume data
        pass
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl,
        Client(cl, set_as_default=False) as c,
    ):
        return compute(str(ds.zarr_path), [cfg], patch, out, client=c, overwrite=True)


def _iterate(loader) -> tuple[int, float, float]:
    """(patches, seconds to the first batch, total seconds) of one pass."""
    t0 = time.perf_counter()
    first = None
    n = 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        n += x.shape[0]
        if first is None:
            first = time.perf_counter() - t0
    return n, first or 0.0, time.perf_counter() - t0


def _one_read_per_patch(ds, url, array_path, plan, limit):
    """Baseline: one zarr read per patch (no cache), for the first ``limit`` plan entries."""
    from patchsieve.volume import open_zarr_array

    arr = open_zarr_array(url, array_path)
    dims = ds.dims
    sel = plan[:limit]

    def run():
        for e in sel:
            sample = np.unravel_index(int(e["sample"]), ds.sample_shape) if ds.sample_shape else ()
            lo, hi = ds._box(dims, ds.channels, [int(i) for i in sample], e["origin"].tolist())
            np.asarray(arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
        return len(sel)

    return run


def _distinct_chunks_per_batch(ds, window: int | None) -> float:
    """Mean number of distinct storage chunks (of the patch origins) in a batch of one worker
    (num_workers 2), from the dataset's own execution order (``ds.shard_stream``)."""
    from patchsieve.sampling import ShardStream

    win = ds.window(2) if window is None else window
    spatial_ch, _ = ds._chunk_grid()
    ch = np.asarray(spatial_ch, np.int64)
    counts = []
    for w in range(2):
        shard = ShardStream(ds.sampler, 0, worker=w, num_workers=2, window=win, chunk_shape=spatial_ch)
        for b in shard.blocks(BATCH):
            keys = np.concatenate([b["sample"][:, None], b["origin"] // ch], axis=1)
            counts.append(len(np.unique(keys, axis=0)))
    return float(np.mean(counts))


def bench_volume(name, ds_spec, cfg, patch, channels, args, careamics_inputs=None):
    import dask.array as da
    from torch.utils.data import default_collate

    from patchsieve.dataset import PatchDataset
    from patchsieve.volume import open_zarr_array

    ds = bench_data.ensure(ds_spec, args.cache)
    sc_path = ds.root / f"bench_dataset_{'x'.join(map(str, patch))}.patchsieve.zarr"
    t0 = time.perf_counter()
    sc = _sidecar(ds, cfg, patch, sc_path)
    t_sidecar = time.perf_counter() - t0
    url = str(ds.zarr_path)
    rows, out = [], {"dataset": ds.info(), "patch_size": patch, "sidecar_s": t_sidecar}

    # time to first batch, num_workers 0, completed side-car (includes opening it + the plan)
    t0 = time.perf_counter()
    pds = PatchDataset(url, sidecar=str(sc_path), channels=channels, seed=0)
    loader0 = pds.loader(batch_size=BATCH)
    next(iter(loader0))
    out["first_batch_s_nw0"] = time.perf_counter() - t0
    n_epoch = len(pds)
    out["patches_per_epoch"] = n_epoch

    # baseline: one zarr read per patch (median of repeat), same plan
    limit = min(n_epoch, 1500 if len(patch) == 2 else 400)
    base = h.median_time(
        _one_read_per_patch(pds, url, sc.array_path, pds.sampler.epoch_plan(0), limit), repeat=args.repeat
    )
    base_rate = limit / base.median_s
    out["one_read_per_patch_per_s"] = base_rate

    # plain Dask read of the whole volume (threads)
    arr = open_zarr_array(url, sc.array_path)
    dread = h.median_time(
        lambda: da.from_zarr(arr).sum(dtype="float64").compute(scheduler="threads"), repeat=args.repeat
    )
    out["dask_read_s"] = dread.median_s

    results, last = {}, {}
    configs = [(nw, ctx, batched) for batched in (False, True)
               for nw, ctx in ((0, None), (2, "fork"), (2, "spawn"))]
    for nw, ctx, batched in configs:
        key = f"nw{nw}" + (f"_{ctx}" if ctx else "") + ("_batched" if batched else "")

        epochs: list = []

        def run(nw=nw, ctx=ctx, key=key, batched=batched, epochs=epochs):
            d = PatchDataset(url, sidecar=str(sc_path), channels=channels, seed=0,
                             batch_size=BATCH if batched else None)
            last[key] = d
            # not batched: patch by patch, stacked by the DataLoader's default_collate
            kw = ({"num_workers": nw} if batched else
                  {"batch_size": BATCH, "num_workers": nw, "collate_fn": default_collate})
            if nw:
                kw.update(multiprocessing_context=ctx, persistent_workers=True)
            loader = d.loader(**kw)
            e1, e2 = _iterate(loader), _iterate(loader)  # the loader advances the epoch
            del loader
            epochs.append((e1, e2))
            return e1, e2

        t = h.median_time(run, repeat=args.repeat)

        def med(ep, field, epochs=epochs):  # median over the repeats, per epoch
            return float(np.median([r[ep][field] for r in epochs]))

        n1, n2 = epochs[0][0][0], epochs[0][1][0]
        first1, total1, first2, total2 = med(0, 1), med(0, 2), med(1, 1), med(1, 2)
        results[key] = {
            "patches": n1,
            "epoch1_s": total1,
            "epoch2_s": total2,
            "two_epochs_median_s": t.median_s,
            "runs": [[list(e1), list(e2)] for e1, e2 in epochs],
            "epoch1_patches_per_s": n1 / total1,
            "epoch2_patches_per_s": n2 / total2,
            "first_batch_epoch1_s": first1,
            "first_batch_epoch2_s": first2,
            "epoch1_after_first_batch_patches_per_s": (n1 - BATCH) / max(total1 - first1, 1e-9),
        }
        label = f"{name} {key.replace('_', ' ')}"
        rows.append(h.summary_row(f"{label} patches/s epoch 1 (start-up incl.)", n1 / total1,
                                  "patches/s", baseline="one zarr read per patch",
                                  baseline_value=base_rate, target=">=10"))
        rows.append(h.summary_row(f"{label} patches/s epoch 2 (steady)", n2 / total2, "patches/s",
                                  baseline="one zarr read per patch", baseline_value=base_rate,
                                  target=">=10"))
        if nw:
            rows.append(h.summary_row(f"{label} worker start-up (epoch 1 first batch)", first1, "s",
                                      note="persistent workers: paid once"))
    out["loaders"] = results
    for key in ("nw2_fork", "nw2_fork_batched"):
        for ep in (1, 2):
            rows.append(
                h.summary_row(
                    f"{name} epoch {ep} time {key.replace('_', ' ')} / plain Dask read",
                    results[key][f"epoch{ep}_s"],
                    "s",
                    baseline="dask read whole volume",
                    baseline_value=dread.median_s,
                    target="<=2",
                    better="lower",
                )
            )
    out["distinct_chunks_per_batch"] = {
        "default_window": _distinct_chunks_per_batch(pds, None),
        "plan_order": _distinct_chunks_per_batch(pds, 0),
        "window_chunks": pds.window(2),
        "batch": BATCH,
    }
    dc = out["distinct_chunks_per_batch"]
    rows.append(h.summary_row(f"{name} distinct chunks per batch of {BATCH}, default window "
                              f"({dc['window_chunks']} chunks)", dc["default_window"], "chunks",
                              baseline="plan order (window 0)", baseline_value=dc["plan_order"]))
    rows.append(h.summary_row(f"{name} time to first batch nw0 (completed side-car)",
                              out["first_batch_s_nw0"], "s", baseline="1 s budget", baseline_value=1.0,
                              target="<=1", better="lower"))
    out["audit"] = {k: v for k, v in last["nw2_fork"].audit().items() if k != "visits"}
    if careamics_inputs is not None and not args.no_careamics:
        res = h.run_careamics(
            ["dataloader"],
            careamics_inputs,
            repeat=1,
            threads=args.threads,
            extra_args=["--loader-filters", "max"],
        )
        out["careamics"] = res
        for row in (res or {}).get("phases", {}).get("dataloader", []):
            nw = row.get("num_workers")
            for batched in (False, True):
                key = ("nw0" if nw == 0 else "nw2_fork") + ("_batched" if batched else "")
                for ep in (1, 2):
                    rows.append(
                        h.summary_row(
                            f"{name} {key.replace('_', ' ')} epoch {ep} vs CAREamics dataset nw{nw} "
                            "(Max filter)",
                            results[key][f"epoch{ep}_patches_per_s"],
                            "patches/s",
                            baseline="CAREamics 0.3.5 in-memory",
                            baseline_value=row.get("patches_per_s_median"),
                            target=">=3",
                        )
                    )
    return rows, out


def _rss_child(url: str, sidecar: str, n: int) -> None:
    """Child of ``--rss``: build the dataset, read ``n`` patches at num_workers 0, print JSON."""
    import json

    from patchsieve.dataset import PatchDataset

    t0 = time.perf_counter()
    ds = PatchDataset(url, sidecar=sidecar, seed=0)
    got, first = 0, None
    for batch in ds.loader(batch_size=BATCH):
        got += batch.shape[0]
        if first is None:
            first = time.perf_counter() - t0
        if got >= n:
            break
    print(json.dumps({"patches": got, "first_batch_s": first, "total_s": time.perf_counter() - t0,
                      "patches_per_epoch": len(ds)}))


def bench_rss(args) -> tuple[list, dict]:
    """Peak RSS of a fresh process reading the same number of patches from 2 vs 16 GiB."""
    import json

    from patchsieve.config import MeanStdPatchFilterConfig

    cfg = MeanStdPatchFilterConfig(mean_threshold=150.0, std_threshold=20.0)
    patch = (16, 64, 64)
    out, peaks = {}, {}
    for name in ("large-2g", "large-16g"):
        ds = bench_data.ensure(bench_data.SPECS[name], args.cache)
        sc_path = ds.root / "bench_dataset_rss_16x64x64.patchsieve.zarr"
        _sidecar(ds, cfg, patch, sc_path)  # computed once, cached beside the data (untimed)
        cmd = [sys.executable, __file__, "--rss-child", str(ds.zarr_path), str(sc_path),
               str(args.rss_patches)]
        res = h.run_with_peak_rss(cmd, timeout=1800)
        info = json.loads(res.stdout.strip().splitlines()[-1])
        info.update(peak_rss_mib=res.peak_rss_bytes / 2**20, gib=ds.spec.nbytes / 2**30)
        out[name] = info
        peaks[name] = res.peak_rss_bytes / 2**20
    rows = [
        h.summary_row(f"peak RSS, {args.rss_patches} patches 16x64x64 from {n} (nw0, MeanStd)",
                      peaks[n], "MiB") for n in peaks
    ]
    rows.append(h.summary_row("peak RSS 16 GiB volume", peaks["large-16g"], "MiB",
                              baseline="peak RSS 2 GiB volume", baseline_value=peaks["large-2g"],
                              target="<=1.2", better="lower"))
    rows.append(h.summary_row("time to first batch nw0, 16 GiB volume (completed side-car)",
                              out["large-16g"]["first_batch_s"], "s", baseline="1 s budget",
                              baseline_value=1.0, target="<=1", better="lower"))
    return rows, out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = h.bench_argparser(__doc__.splitlines()[0])
    ap.add_argument("--careamics", action="store_true",
                    help="also run CAREamics' dataloader (default when its venv exists, see "
                         "benchmarks/careamics-env.sh)")
    ap.add_argument("--rss", action="store_true", help="also peak RSS 2 GiB vs 16 GiB volume")
    ap.add_argument("--rss-only", action="store_true", help="only the peak RSS comparison")
    ap.add_argument("--rss-patches", type=int, default=4096, help="patches read in --rss")
    args = ap.parse_args()
    care_venv = os.environ.get("PATCHSIEVE_CAREAMICS_VENV") or h.CAREAMICS_VENV
    if not args.no_careamics and h.venv_python(care_venv).exists():
        args.careamics = True  # make bench sets the venv up first: compare by default
    threads = h.set_threads(args.threads)
    if args.rss_only:
        rows, rss = bench_rss(args)
        h.print_table("bench_dataset --rss-only", rows,
                      ["what", "value", "unit", "baseline_value", "ratio", "target", "met"])
        print(rss)
        print("results:", h.write_results("dataset_rss", {"threads": threads, "rss": rss,
                                                          "summary": rows}, args.results))
        return
    from patchsieve.config import MaxPatchFilterConfig

    spec2d = bench_data.SPECS["ref2d"]
    if args.quick:
        spec2d = spec2d.resized("ref2d-12", (12, 1024, 1024))
    payload = {"threads": threads, "volumes": {}}
    rows = []
    care_in = None
    if args.careamics:
        ds2 = bench_data.ensure(spec2d, args.cache)
        if ds2.npy_path is not None:
            care_in = {
                "input": str(ds2.npy_path),
                "axes": "SYX",
                "patch_size": (64, 64),
                "params": {"max": {"threshold": 300.0, "coverage": 0.25}},
                "num_workers": (0, 2),
                "batch_size": BATCH,
                "n_patches": 15000,
            }
    r, o = bench_volume(
        "2D 64^2", spec2d, MaxPatchFilterConfig(threshold=300.0, coverage=0.25), (64, 64), None, args, care_in
    )
    rows += r
    payload["volumes"]["2d"] = o
    if args.quick:
        r, o = bench_volume(
            "3D 16x64x64", bench_data.SPECS["vol3d"],
            MaxPatchFilterConfig(threshold=300.0, coverage=0.125, ref_channel=1),
            (16, 64, 64), [1], args,
        )
    else:  # 2 GiB ZYX uint16, 4 MiB chunks (32x256x256): the 3D case of the issue
        r, o = bench_volume(
            "3D 16x64x64", bench_data.SPECS["large-2g"],
            MaxPatchFilterConfig(threshold=300.0, coverage=0.125), (16, 64, 64), None, args,
        )
    rows += r
    payload["volumes"]["3d"] = o
    if args.rss:
        r, payload["rss"] = bench_rss(args)
        rows += r
    payload["summary"] = rows
    h.print_table(
        "bench_dataset", rows, ["what", "value", "unit", "baseline_value", "ratio", "target", "met"]
    )
    for key, vol in payload["volumes"].items():
        print(
            key,
            {
                k: vol[k]
                for k in (
                    "first_batch_s_nw0",
                    "patches_per_epoch",
                    "one_read_per_patch_per_s",
                    "dask_read_s",
                    "distinct_chunks_per_batch",
                )
            },
        )
        for lk, lv in vol["loaders"].items():
            print("  ", lk, {k: round(v, 3) for k, v in lv.items() if k != "runs"})
        print("   audit", vol["audit"])
    print("results:", h.write_results("dataset", payload, args.results))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
