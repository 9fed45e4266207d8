"""Peer libraries vs patchsieve's PatchDataset: weighted patch sampling, same data, same run.

TorchIO 1.2.1 (``WeightedSampler`` + ``Queue``) and MONAI (``RandWeightedCropd``) run in
``benchmarks/.venv-peers``, zarrdataset 0.2.2 (binary mask, zarr < 3) in
``benchmarks/.venv-zarrdataset`` (``bash benchmarks/peers-env.sh`` creates both), driven by
``peers_driver.py`` as subprocesses that report JSON. The peers hold the array in RAM (TorchIO,
MONAI) or read a zarr v2 copy (zarrdataset); patchsieve streams from the compressed Zarr.
Workloads: the Hagen-like 2D stack (patch 64², weights 1 where the data > 300 else 0.1) and the
3D two-channel volume (patch 16×64×64, reference channel 1). Each rate counts the same number
of patches (default: one epoch of the patchsieve plan in 2D, 15,785 patches; two in 3D, 512),
worker start-up included (patchsieve's first batch is reported beside it), median of
``--repeat`` (at most 2 runs for TorchIO/MONAI, 1 for zarrdataset); patchsieve starts every run
with a fresh dataset (cold chunk cache). torch/OMP threads are reported.
Targets (issue 6): patchsieve >= 10x every peer in 2D and >= 2x in 3D.

    python benchmarks/bench_peers.py             # both workloads, all peers present
    python benchmarks/bench_peers.py --quick     # fewer patches, 1 run
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import data as bench_data  # noqa: E402

BATCH = 32
NUM_WORKERS = (0, 2)


def patchsieve_rate(url: str, cfg: Any, patch: tuple[int, ...], channels: list[int] | None,
                    n: int, nw: int, repeat: int) -> dict[str, float]:
    """Patches/s of PatchDataset for ``n`` patches, start-up included, median of ``repeat``.

    Every run builds a fresh dataset (cold chunk cache: each chunk is decoded again; the
    side-car and the OS page cache are warm, as the peers' arrays are in RAM) and one loader
    (``PatchDataset(batch_size=BATCH)`` + ``loader(num_workers=nw, persistent_workers=True)``,
    the documented fast path); epochs follow each other until ``n`` patches have arrived.
    Also returns the median time to the first batch.
    """
    from patchsieve import PatchDataset

    rates, firsts = [], []
    for r in range(repeat):
        ds = PatchDataset(url, patch_size=patch, patch_filter_config=cfg, channels=channels,
                          seed=r, batch_size=BATCH)
        kw = {"persistent_workers": True} if nw else {}
        t0 = time.perf_counter()
        loader = ds.loader(num_workers=nw, **kw)
        got, first = 0, None
        while got < n:
            for batch in loader:
                if first is None:
                    first = time.perf_counter() - t0
                got += batch.shape[0]
                if got >= n:
                    break
        rates.append(got / (time.perf_counter() - t0))
        firsts.append(first)
        del loader
    return {"rate": statistics.median(rates), "first_batch_s": statistics.median(firsts),
            "epoch_length": len(ds)}


def epoch_length(spec: str, cfg: Any, patch: tuple[int, ...], args) -> int:
    """Patches per epoch of the patchsieve plan on ``spec`` (the default patch count)."""
    from patchsieve import PatchDataset

    ds = bench_data.ensure(spec, args.cache)
    return len(PatchDataset(str(ds.zarr_path), patch_size=patch, patch_filter_config=cfg))


def bench(label: str, spec: str, cfg: Any, patch: tuple[int, ...], axes: str,
          ref: int | None, channels: list[int] | None, n: int, target: str, args) -> list[dict]:
    ds = bench_data.ensure(spec, args.cache)
    meas = {nw: patchsieve_rate(str(ds.zarr_path), cfg, patch, channels, n, nw, args.repeat)
            for nw in NUM_WORKERS}
    ours = {nw: m["rate"] for nw, m in meas.items()}
    rows = [h.summary_row(f"{label} patchsieve PatchDataset nw{nw} ({n} patches)", m["rate"],
                          "patches/s", note=f"first batch {m['first_batch_s']:.3f} s; epoch "
                                            f"{m['epoch_length']} patches")
            for nw, m in meas.items()]
    if args.no_peers:
        return rows
    inputs = {"input": str(ds.npy_path), "axes": axes, "patch_size": patch, "ref_channel": ref,
              "n_patches": n, "num_workers": NUM_WORKERS, "batch_size": BATCH, "seed": 0}
    results: list[dict] = []
    for peers, runs in ((("torchio", "monai"), 2), (("zarrdataset",), 1)):
        # peers are 10-100x slower: few runs keep `make bench` under 30 minutes
        out = h.run_peers(inputs, peers=peers, repeat=min(args.repeat, runs),
                          threads=args.threads)
        if out is None:
            print(f"skip {peers}: virtualenv missing or driver failed (see above)")
            continue
        results += out.get("results", [])
    for res in results:
        nw = int(res["num_workers"])
        rows.append(h.summary_row(
            f"{label} patchsieve nw{nw} vs {res['peer']} nw{nw}", ours[nw], "patches/s",
            baseline=f"{res['peer']} {res.get('version', '')}".strip(),
            baseline_value=float(res["patches_per_s"]), target=target,
            note=res.get("api", "")))
    return rows


def main() -> None:
    from patchsieve.config import MaxPatchFilterConfig

    ap = h.bench_argparser(__doc__.splitlines()[0])
    ap.add_argument("--n2", type=int, default=None,
                    help="2D patches per run (default: one epoch of the patchsieve plan)")
    ap.add_argument("--n3", type=int, default=None,
                    help="3D patches per run (default: two epochs of the patchsieve plan)")
    args = ap.parse_args()
    threads = h.set_threads(args.threads)
    if args.quick:
        args.repeat = 1
    cfg2 = MaxPatchFilterConfig(threshold=300.0)
    cfg3 = MaxPatchFilterConfig(threshold=300.0, ref_channel=1)
    t0 = time.perf_counter()
    # default: one epoch of the patchsieve plan in 2D (every pixel about once: the unit a
    # training run repeats), two epochs in 3D (one is only 256 patches)
    n2 = args.n2 or (512 if args.quick else epoch_length("ref2d", cfg2, (64, 64), args))
    n3 = args.n3 or (128 if args.quick else 2 * epoch_length("vol3d", cfg3, (16, 64, 64), args))
    rows = bench("2D 64^2 (ref2d)", "ref2d", cfg2, (64, 64), "SYX", None, None, n2, ">=10",
                 args)
    rows += bench("3D 16x64x64 (vol3d)", "vol3d", cfg3, (16, 64, 64), "CZYX", 1, None, n3, ">=2",
                  args)
    h.print_table("bench_peers", rows, ["what", "value", "unit", "baseline", "baseline_value",
                                        "ratio", "target", "met", "note"])
    print("results:", h.write_results("peers", {"threads": threads, "summary": rows,
                                                "wall_s": time.perf_counter() - t0},
                                      args.results))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
