"""napari plugin: live threshold update on 10^6 regions, and opening large side-cars.

Side-cars with synthetic region statistics are written through ``SidecarWriter``
(``tests/napari_data.py``) over metadata-only OME-Zarr sources (no chunk on disk):

* ``2d-1000^2``: 64,000 x 64,000 pixels, patch 64 -> a 1000 x 1000 region grid (10^6 regions);
* ``3d-100^3``: 1,600 x 6,400 x 6,400 pixels, patch 16 x 64 x 64 -> a 100^3 region grid;
* ``512x4096^2``: the issue's large volume, patch 16 x 64 x 64 (131,072 regions).

Measured in the same run (median of ``--repeat``, thresholds swept over the value range):

* **live update** = ``LiveThreshold.set_threshold`` (decisions with
  ``filter_out_from_stats``, counts, patches per epoch, new cell mask) + ``Labels.refresh()`` on a
  ``ViewerModel`` (slicing what napari shows; no painting). Target < 0.2 s. Baselines: recomputing
  the decisions with numpy from the stats array (``stats < t`` and its count: the floor), and
  ``apply_threshold`` (what the CLI's ``suggest-threshold --apply`` costs per threshold).
* **open** = ``viewer.open(sidecar, plugin="patchsieve")`` on a ``ViewerModel``: the first open
  in a fresh napari session (a subprocess that imported napari; the plugin's own imports and
  napari's first Labels layer included) and the median of later opens, and the source chunks it
  reads. Target < 2 s.
  Baseline: ``open_sidecar`` + ``open_pyramid`` (the metadata reads any viewer needs).

Run: ``python benchmarks/bench_napari.py [--quick] [--repeat 5]``; writes
``benchmarks/results/bench_napari.json``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _harness as H  # noqa: E402
from napari_data import metadata_only_ome_zarr, synthetic_sidecar  # noqa: E402

CASES = {
    "2d-1000^2": {"shape": (64000, 64000), "chunks": (1024, 1024), "axes": "yx",
                  "patch": (64, 64)},
    "3d-100^3": {"shape": (1600, 6400, 6400), "chunks": (16, 512, 512), "axes": "zyx",
                 "patch": (16, 64, 64)},
    "512x4096^2": {"shape": (512, 4096, 4096), "chunks": (16, 256, 256), "axes": "zyx",
                   "patch": (16, 64, 64)},
}
QUICK = {"2d-1000^2": {"shape": (16000, 16000), "chunks": (1024, 1024), "axes": "yx",
                       "patch": (64, 64)}}


class _Reads:
    """Count source chunk reads through zarr's LocalStore (as tests/conftest.py does)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __enter__(self) -> _Reads:
        import zarr

        local = zarr.storage.LocalStore
        self._orig = local.get
        counter = self

        async def get(store: Any, key: str, *a: Any, **k: Any) -> Any:
            counter.keys.append(key)
            return await counter._orig(store, key, *a, **k)

        local.get = get
        return self

    def __exit__(self, *exc: Any) -> None:
        import zarr

        zarr.storage.LocalStore.get = self._orig

    def source_chunks(self) -> int:
        meta = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
        return sum(1 for k in self.keys if k[:1] == "s" and k[1:2].isdigit()
                   and not k.endswith(meta))


def _make(root: Path, name: str, case: dict[str, Any]) -> str:
    from patchsieve.config import ShannonPatchFilterConfig

    src = metadata_only_ome_zarr(root / f"{name}.ome.zarr", case["shape"], case["chunks"],
                                 axes=case["axes"], levels=4)
    return synthetic_sidecar(src, str(root / f"{name}.patchsieve.zarr"), case["patch"],
                             {"shannon": ShannonPatchFilterConfig(threshold=7.0)})


def bench_live(path: str, repeat: int, root: Path) -> dict[str, Any]:
    from napari.components import ViewerModel

    from patchsieve.analysis import apply_threshold
    from patchsieve.napari import LiveThreshold

    viewer = ViewerModel()
    layers = viewer.open(path, plugin="patchsieve")
    labels = layers[-1]
    live = LiveThreshold(labels.metadata["patchsieve"]["scene"], "shannon")
    stats = live.scene.sidecar.stats["entropy"]  # what the live update compares, too
    lo, hi = live.value_range
    thresholds = list(np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), 11))

    def live_update() -> None:
        for t in thresholds:
            live.set_threshold(t)
            labels.refresh()

    def numpy_floor() -> None:
        for t in thresholds:
            int(np.count_nonzero(stats < t))

    per_live = [r / len(thresholds) for r in H.median_time(live_update, repeat, warmup=1).runs_s]
    per_np = [r / len(thresholds) for r in H.median_time(numpy_floor, repeat, warmup=1).runs_s]
    single = []
    for t in thresholds:  # the worst single update matters for a slider
        t0 = time.perf_counter()
        live.set_threshold(t)
        labels.refresh()
        single.append(time.perf_counter() - t0)
    copy = root / "apply-copy.patchsieve.zarr"
    shutil.copytree(path, copy)
    apply_runs = []
    for t in thresholds[:3]:
        t0 = time.perf_counter()
        apply_threshold(str(copy), "shannon", float(t))
        apply_runs.append(time.perf_counter() - t0)
    shutil.rmtree(copy)
    return {"n_regions": int(stats.size), "thresholds": len(thresholds),
            "live_update_s": float(np.median(per_live)), "live_update_runs_s": per_live,
            "live_update_max_single_s": float(max(single)),
            "numpy_decisions_s": float(np.median(per_np)),
            "apply_threshold_s": float(np.median(apply_runs)), "apply_runs_s": apply_runs}


_COLD = """
import time, napari, npe2
from napari.components import ViewerModel
npe2.PluginManager.instance().discover()
viewer = ViewerModel()
t0 = time.perf_counter()
viewer.open({path!r}, plugin="patchsieve")
print(time.perf_counter() - t0)
"""


def _cold_open(path: str) -> float:
    """First open in a fresh napari session (napari imported; the plugin's imports included)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _COLD.format(path=path)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_open(path: str, repeat: int) -> dict[str, Any]:
    from napari.components import ViewerModel

    from patchsieve.sidecar import open_sidecar
    from patchsieve.volume import open_pyramid

    def open_once() -> tuple[float, int]:
        viewer = ViewerModel()
        with _Reads() as reads:
            t0 = time.perf_counter()
            viewer.open(path, plugin="patchsieve")
            dt = time.perf_counter() - t0
        return dt, reads.source_chunks()

    cold = [_cold_open(path) for _ in range(max(1, repeat // 2))]
    first, first_reads = open_once()
    later = [open_once() for _ in range(repeat)]

    def metadata_only() -> None:
        sc = open_sidecar(path)
        open_pyramid(sc.source)

    base = H.median_time(metadata_only, repeat)
    return {"cold_open_s": float(np.median(cold)), "cold_runs_s": cold,
            "first_open_s": first, "open_s": float(np.median([t for t, _ in later])),
            "open_runs_s": [t for t, _ in later], "source_chunk_reads": first_reads,
            "metadata_baseline_s": base.median_s}


def main() -> None:
    ap = H.bench_argparser(__doc__.splitlines()[0])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-napari-", dir=args.cache))
    # the reader stores its reader preference: in a throw-away napari settings file
    os.environ["NAPARI_CONFIG"] = str(root / "napari-settings.yaml")
    import npe2

    npe2.PluginManager.instance().discover()
    t0 = time.perf_counter()  # what the first open in a napari session also pays, once
    import patchsieve.analysis  # noqa: F401
    import patchsieve.napari._reader  # noqa: F401
    from patchsieve.volume import open_pyramid  # noqa: F401 - dask, xarray
    import_s = time.perf_counter() - t0
    cases = QUICK if args.quick else CASES
    results: dict[str, Any] = {}
    rows = []
    try:
        for name, case in cases.items():
            t0 = time.perf_counter()
            path = _make(root, name, case)
            res: dict[str, Any] = {"case": case, "make_s": time.perf_counter() - t0}
            res["open"] = bench_open(path, args.repeat)
            if name != "512x4096^2":
                res["live"] = bench_live(path, args.repeat, root)
                lv = res["live"]
                rows.append(H.summary_row(
                    f"napari live threshold update, {name} ({lv['n_regions']:,} regions)",
                    lv["live_update_s"], "s", baseline="numpy stats < t",
                    baseline_value=lv["numpy_decisions_s"], better="lower",
                    note=f"max single {lv['live_update_max_single_s']:.3f} s; target < 0.2 s; "
                         f"apply_threshold {lv['apply_threshold_s']:.2f} s"))
            op = res["open"]
            rows.append(H.summary_row(
                f"napari open side-car, {name} source", op["open_s"], "s",
                baseline="open_sidecar + open_pyramid", baseline_value=op["metadata_baseline_s"],
                better="lower", note=f"first open in a fresh napari session {op['cold_open_s']:.2f} s; "
                                     f"{op['source_chunk_reads']} source chunks read; target < 2 s"))
            results[name] = res
            print(name, {k: v for k, v in res.items() if k != "case"}, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    H.print_table("napari plugin", rows)
    print(f"plugin imports (once per napari session): {import_s:.2f} s")
    out = H.write_results("bench_napari", {"results": results, "summary": rows,
                                           "plugin_import_s": import_s,
                                           "repeat": args.repeat, "quick": args.quick},
                          args.results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
