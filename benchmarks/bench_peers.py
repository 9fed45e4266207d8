"""Peer libraries vs patchsieve's PatchDataset: weighted patch sampling, same data, same run.

TorchIO 1.2.1 (``WeightedSampler`` + ``Queue``) and MONAI (``RandWeightedCropd``) run in
``benchmarks/.venv-peers``, zarrdataset 0.2.2 (binary mask, zarr < 3) in
``benchmarks/.venv-zarrdataset`` (``bash benchmarks/peers-env.sh`` creates both), driven by
``peers_driver.py`` as subprocesses that report JSON. The peers hold the array in RAM (TorchIO,
MONAI) or read a zarr v2 copy (zarrdataset); patchsieve streams from the compressed Zarr.
Workloads: the Hagen-like 2D stack (patch 64², weights 1 where the data > 300 else 0.1) and the
3D two-channel volume (patch 16×64×64, reference channel 1). Each rate counts the same number
of patches, worker start-up included, median of ``--repeat`` (at most 2 for the peers);
torch/OMP threads are reported.
Targets (issue 6): patchsieve >= 10x every peer in 2D and >= 2x in 3D.

    python benchmarks/bench_peers.py             # both workloads, all peers present
    python benchmarks/bench_peers.py --quick     # fewer patches, 1 run
"""

from __future__ import annotations

import os
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
                    n: int, nw: int, repeat: int) -> float:
    """Patches/s of PatchDataset for ``n`` patches (a fresh loader each run, start-up included)."""
    from patchsieve import PatchDataset

    ds = PatchDataset(url, patch_size=patch, patch_filter_config=cfg, channels=channels, seed=0)

    def once() -> None:
        got = 0
        for batch in ds.loader(batch_size=BATCH, num_workers=nw):
            got += batch.shape[0]
            if got >= n:
                break

    t = h.median_time(once, repeat=repeat)
    return n / t.median_s


def bench(label: str, spec: str, cfg: Any, patch: tuple[int, ...], axes: str,
          ref: int | None, channels: list[int] | None, n: int, target: str, args) -> list[dict]:
    ds = bench_data.ensure(spec, args.cache)
    ours = {nw: patchsieve_rate(str(ds.zarr_path), cfg, patch, channels, n, nw, args.repeat)
            for nw in NUM_WORKERS}
    rows = [h.summary_row(f"{label} patchsieve PatchDataset nw{nw}", r, "patches/s")
            for nw, r in ours.items()]
    if args.no_peers:
        return rows
    inputs = {"input": str(ds.npy_path), "axes": axes, "patch_size": patch, "ref_channel": ref,
              "n_patches": n, "num_workers": NUM_WORKERS, "batch_size": BATCH, "seed": 0}
    results: list[dict] = []
    for peers in (("torchio", "monai"), ("zarrdataset",)):
        # peers are 10-100x slower: at most 2 runs each keeps `make bench` under 30 minutes
        out = h.run_peers(inputs, peers=peers, repeat=min(args.repeat, 2),
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
    args = ap.parse_args()
    threads = h.set_threads(args.threads)
    if args.quick:
        args.repeat = 1
    n2, n3 = (512, 128) if args.quick else (4096, 512)
    t0 = time.perf_counter()
    rows = bench("2D 64^2 (hagen2d)", "hagen2d", MaxPatchFilterConfig(threshold=300.0), (64, 64),
                 "SYX", None, None, n2, ">=10", args)
    rows += bench("3D 16x64x64 (vol3d)", "vol3d",
                  MaxPatchFilterConfig(threshold=300.0, ref_channel=1), (16, 64, 64), "CZYX", 1,
                  None, n3, ">=2", args)
    h.print_table("bench_peers", rows, ["what", "value", "unit", "baseline", "baseline_value",
                                        "ratio", "target", "met"])
    print("results:", h.write_results("peers", {"threads": threads, "summary": rows,
                                                "wall_s": time.perf_counter() - t0},
                                      args.results))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
