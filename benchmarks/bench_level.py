"""Filtering on a coarser pyramid level: speed-up and decision agreement with level 0.

Data: the 3D two-channel demo volume (``write_demo_data(kind="vol3d2c")``, full size
``(2, 64, 512, 512)`` uint16 with a 3-level pyramid halving z, y and x; ``--quick``: the small
one). Filters score channel 1 (the denser one): Shannon, MeanStd (mean only) and Max.

Measured in the same run, on the same in-process Dask cluster (2 threads):

* the filter pass (``compute``, side-car written from scratch) on level 0 with patch
  ``(16, 64, 64)`` and on level 1 with the patch scaled by the level's factors
  (``level_patch_size`` -> ``(8, 32, 32)``): median of ``--repeat`` runs each; speed-up =
  level-0 time / level-1 time;
* decision agreement (``level_agreement``: level-1 decisions mapped back onto the level-0 region
  grid, share of identical region decisions), with level-0 thresholds set by Otsu on the level-0
  statistics and, for level 1, (a) the same thresholds, (b) Otsu on the level-1 statistics,
  (c) the level-1 threshold that drops the same share of regions as level 0;
* the threshold tools at scale: ``suggest_threshold`` (Otsu and a target background fraction),
  the histogram PNG and ``summarize`` on a side-car of >= 10^6 regions.

Run: ``python benchmarks/bench_level.py [--quick] [--repeat 3]``; writes
``benchmarks/results/level.json``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402

PATCH0 = (16, 64, 64)
REF_CHANNEL = 1


def filters() -> dict[str, Any]:
    from patchsieve.config import (
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )

    common = {"ref_channel": REF_CHANNEL}
    return {"shannon": ShannonPatchFilterConfig(threshold=7.0, **common),
            "mean_std": MeanStdPatchFilterConfig(mean_threshold=200.0, **common),
            "max": MaxPatchFilterConfig(threshold=400.0, **common)}


def timed_pass(client: Any, src: str, patch: Any, level: int, out: Path, repeat: int) -> H.Timing:
    from patchsieve.compute import compute

    def run(_: Any) -> Any:
        return compute(src, filters(), patch, out, client=client, level=level, overwrite=True)

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)

    return H.median_time(run, repeat=repeat, setup=fresh, warmup=1)


def agreement_rows(src: str, l0: Path, l1: Path) -> list[dict[str, Any]]:
    from patchsieve.inspect import apply_threshold, level_agreement, suggest_threshold

    rows = []
    for name in filters():
        otsu0 = suggest_threshold(l0, name)
        apply_threshold(l0, name, otsu0.threshold)
        apply_threshold(l1, name, otsu0.threshold)  # (a) same threshold
        same = level_agreement(l1, l0, [name])[name]
        otsu1 = suggest_threshold(l1, name)
        apply_threshold(l1, name, otsu1.threshold)  # (b) Otsu on level 1
        own = level_agreement(l1, l0, [name])[name]
        rows.append({
            "filter": name, "regions": same["n_regions"],
            "threshold_l0": round(otsu0.threshold, 4),
            "bg_l0": round(same["background_fraction_fine"], 4),
            "agree_same_thr": round(same["agreement"], 4),
            "bg_l1_same_thr": round(same["background_fraction_coarse"], 4),
            "threshold_l1_otsu": round(otsu1.threshold, 4),
            "agree_otsu_l1": round(own["agreement"], 4),
            "agree_matched_share": None if own["agreement_at_matched_fraction"] is None
            else round(own["agreement_at_matched_fraction"], 4),
        })
    return rows


def read_bytes(src: str, level: int) -> int:
    from patchsieve.volume import open_volume

    vol = open_volume(src, level=level)
    return int(vol.sizes["z"] * vol.sizes["y"] * vol.sizes["x"] * vol.dtype.itemsize)


def million_regions(client: Any, work: Path, quick: bool) -> list[dict[str, Any]]:
    """Threshold tools on a side-car of >= 10^6 regions (patch 2 x 2 on a 2048^2 image)."""
    import numpy as np
    import zarr

    from patchsieve.compute import compute
    from patchsieve.config import ShannonPatchFilterConfig
    from patchsieve.inspect import plot_threshold_histogram, suggest_threshold, summarize

    n = 1024 if quick else 2048
    path = work / "million.zarr"
    z = zarr.create_array(str(path), shape=(n, n), chunks=(512, 512), dtype="uint16",
                          dimension_names=("y", "x"), fill_value=0)
    rng = np.random.default_rng(0)
    levels = rng.integers(1, 60, size=(n // 128, n // 128))
    z[...] = rng.poisson(np.kron(levels, np.ones((128, 128)))).astype(np.uint16)
    sc = compute(str(path), ShannonPatchFilterConfig(threshold=1.5), (2, 2),
                 work / "million.patchsieve.zarr", client=client, overwrite=True)
    regions = int(np.prod(sc.grid_shape))
    rows = []
    p = sc.path  # every call opens the side-car and reads the statistics again
    for what, fn in (
        ("suggest_threshold otsu", lambda: suggest_threshold(p, "shannon")),
        ("suggest_threshold 70 % background",
         lambda: suggest_threshold(p, "shannon", background_fraction=0.7)),
        ("suggest + histogram PNG", lambda: plot_threshold_histogram(
            p, suggest_threshold(p, "shannon"), work / "million.png")),
        ("summarize (inspect)", lambda: summarize(p, find_references=False)),
    ):
        t = H.median_time(fn, repeat=3)
        rows.append({"operation": what, "regions": regions, "median_s": round(t.median_s, 3)})
    return rows


def main() -> None:
    args = H.bench_argparser(__doc__.splitlines()[0]).parse_args()
    H.set_threads(args.threads)
    from distributed import Client, LocalCluster

    from patchsieve.demo import write_demo_data
    from patchsieve.inspect import level_patch_size

    cache = Path(args.cache) if args.cache else H.REPO_ROOT / ".bench-cache"
    size = "small" if args.quick else "full"
    src = write_demo_data(cache / f"demo-{size}", kind="vol3d2c", size=size)["vol3d2c"]
    patch1 = level_patch_size(src, PATCH0, 1)
    work = Path(tempfile.mkdtemp(prefix="bench-level-"))
    try:
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                          dashboard_address=None) as cl, Client(cl) as client:
            t0 = timed_pass(client, src, PATCH0, 0, work / "l0.patchsieve.zarr", args.repeat)
            t1 = timed_pass(client, src, patch1, 1, work / "l1.patchsieve.zarr", args.repeat)
            rows = agreement_rows(src, work / "l0.patchsieve.zarr", work / "l1.patchsieve.zarr")
            t_start = time.perf_counter()
            big = million_regions(client, work, args.quick)
            big_setup_s = time.perf_counter() - t_start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    b0, b1 = read_bytes(src, 0), read_bytes(src, 1)
    speed = [
        {"level": 0, "patch": str(PATCH0), "channel_MB": round(b0 / 1e6, 1),
         "median_s": round(t0.median_s, 3), "MBps": round(H.mb_per_s(b0, t0.median_s), 1),
         "runs_s": [round(r, 3) for r in t0.runs_s]},
        {"level": 1, "patch": str(tuple(patch1.values())), "channel_MB": round(b1 / 1e6, 1),
         "median_s": round(t1.median_s, 3), "MBps": round(H.mb_per_s(b1, t1.median_s), 1),
         "runs_s": [round(r, 3) for r in t1.runs_s]},
    ]
    H.print_table("filter pass (3 filters, ref channel 1), level 0 vs level 1", speed)
    H.print_table("decision agreement, level-1 decisions mapped to level 0", rows)
    H.print_table(f"threshold tools on a side-car of >= 10^6 regions (setup {big_setup_s:.0f} s)",
                  big)
    sh = next(r for r in rows if r["filter"] == "shannon")
    summary = [
        H.summary_row("filter pass level 1 vs level 0, vol3d2c " + size, t1.median_s, "s",
                      baseline="level 0 filter pass", baseline_value=t0.median_s, better="lower",
                      target="<=0.5"),
        H.summary_row("Shannon decisions identical, level 1 (Otsu per level) vs level 0",
                      sh["agree_otsu_l1"], "fraction", note="level-1 decisions on level-0 grid"),
        H.summary_row("suggest_threshold otsu, >= 10^6 regions", big[0]["median_s"], "s",
                      better="lower", note="issue 9: seconds for 10^6+ regions"),
    ]
    payload = {"data": {"source": "write_demo_data vol3d2c", "size": size,
                        "patch_level0": PATCH0, "patch_level1": patch1,
                        "ref_channel": REF_CHANNEL},
               "speed": speed, "speedup_level1": round(t0.median_s / t1.median_s, 2),
               "agreement": rows, "million_regions": big, "summary": summary}
    path = H.write_results("level", payload, args.results)
    print(f"speed-up level 1 vs level 0: {t0.median_s / t1.median_s:.2f}x; results: {path}")


if __name__ == "__main__":
    main()
