"""CAREamics 0.3.5 trained from patchsieve vs CAREamics' own pipelines (issue 18), one run.

Every training run is a fresh process of ``careamics_train_driver.py`` in
``benchmarks/.venv-careamics`` (``bash benchmarks/careamics-env.sh``); CPU only.

1. **Quality** (``--parts quality``): 2D N2V on 8 training and 2 held-out 256^2 images of
   low-count Poisson blobs (``patchsieve.demo.poisson_blobs``) with clean copies, patch 64, batch
   16, ``--steps`` (300) steps, seeds 1-3; PSNR of ``careamist.predict`` against the clean
   held-out images for patchsieve-fed training vs CAREamics' own ``careamist.train`` in memory
   and on Zarr. Target: |delta PSNR| <= max(0.5 dB, 2 standard errors). Then 3D N2V (3 + 1
   volumes of 32x128x128, patch 16x64x64, batch 4) and 2D CARE (clean targets), one seed,
   ``--small-steps`` steps: loss decreasing, PSNR reported.
2. **Data loading inside training** (``--parts loading``): the 2D demo stack ``ref2d``
   (79x1024^2 float32 OME-Zarr, Max threshold 300, patch 64, batch 32, num_workers 0, N2V config
   with a no-op training step): time to the first training step and patches/s, patchsieve
   (cold: filter pass included; warm: side-car reused) vs CAREamics in memory (``.npy`` load
   included) and CAREamics' Zarr path. Targets: >= 5x faster to the first step and >= 20x the
   patches/s of the Zarr path.
3. **Memory** (``--parts memory``): peak RSS (process tree: the filter pass's LocalCluster
   included) of a patchsieve training run (cold side-car, ``--memory-steps`` steps, 3D N2V patch
   16x64x64, batch 8) on ``large-16g`` vs ``large-2g``. Target <= 1.2x. CAREamics' in-memory
   path on ``large-2g`` as measured; on ``large-16g`` it is not run (its float32 copy alone is
   32 GiB, more than this machine's RAM).

Usage::

    python benchmarks/bench_careamics_train.py                 # all parts
    python benchmarks/bench_careamics_train.py --parts quality --seeds 1,2,3
    python benchmarks/bench_careamics_train.py --quick         # tiny smoke run
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import data as bench_data  # noqa: E402

DRIVER = h.BENCH_DIR / "careamics_train_driver.py"
HINT = "create it with: bash benchmarks/careamics-env.sh"
PIPES = ("patchsieve", "careamics_memory", "careamics_zarr")


def _venv() -> str:
    return os.environ.get("PATCHSIEVE_CAREAMICS_VENV") or str(h.CAREAMICS_VENV)


def drive(part: str, args: list[str], threads: int | None, timeout: float = 7200) -> dict | None:
    doc = h.run_venv_driver(_venv(), DRIVER, [part, *args], setup_hint=HINT, timeout=timeout,
                            env=None if threads is None else {"OMP_NUM_THREADS": str(threads)})
    if doc is not None:
        print(f"  {part} {' '.join(args[:4])}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in doc.items() if k in ("psnr_mean", "train_s", "first_step_s",
                                              "patches_per_s", "driver_peak_rss_bytes")),
              flush=True)
    return doc


# --------------------------------------------------------------------------- quality
def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def part_quality(args: Any, work: Path, threads: int | None) -> tuple[dict, list[dict]]:
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {p: [] for p in PIPES}
    for seed in seeds:
        for p in PIPES:
            doc = drive("quality", ["--pipeline", p, "--seed", str(seed), "--steps",
                                    str(args.steps), "--workdir", str(work / f"q2d_{p}_{seed}"),
                                    "--dims", "2", "--algo", "n2v"], threads)
            if doc is not None:
                runs[p].append(doc)
    rows, out = [], {"n2v2d": runs}
    ps_vals = [r["psnr_mean"] for r in runs["patchsieve"]]
    if ps_vals:
        m_ps, se_ps = _mean_se(ps_vals)
        for base in ("careamics_memory", "careamics_zarr"):
            vals = [r["psnr_mean"] for r in runs[base]]
            if not vals:
                continue
            m_b, se_b = _mean_se(vals)
            delta = m_ps - m_b
            tol = max(0.5, 2 * math.sqrt(se_ps**2 + se_b**2)) if len(vals) > 1 else 0.5
            rows.append(h.summary_row(
                f"2D N2V PSNR ({len(seeds)} seeds, {args.steps} steps): patchsieve vs {base}",
                m_ps, "dB", baseline=f"CAREamics 0.3.5 {base}", baseline_value=m_b,
                note=f"delta {delta:+.2f} dB, tolerance {tol:.2f} dB (max(0.5, 2 SE)): "
                     f"{'met' if abs(delta) <= tol else 'MISSED'}; SE {se_ps:.2f} / {se_b:.2f}"))
    for name, dims, algo in (("n2v3d", 3, "n2v"), ("care2d", 2, "care")):
        small: dict[str, dict] = {}
        for p in ("patchsieve", "careamics_memory"):
            doc = drive("quality", ["--pipeline", p, "--seed", "1", "--steps",
                                    str(args.small_steps), "--workdir",
                                    str(work / f"{name}_{p}"), "--dims", str(dims), "--algo",
                                    algo], threads)
            if doc is not None:
                small[p] = doc
        out[name] = small
        if "patchsieve" in small:
            r = small["patchsieve"]
            loss = r["train_loss"]
            base = small.get("careamics_memory")
            rows.append(h.summary_row(
                f"{name} PSNR, {args.small_steps} steps (1 seed): patchsieve vs in-memory",
                r["psnr_mean"], "dB", baseline="CAREamics 0.3.5 careamics_memory" if base else None,
                baseline_value=base["psnr_mean"] if base else None,
                note=f"train loss {loss[0]:.3g} -> {loss[-1]:.3g} "
                     f"({'decreasing' if loss[-1] < loss[0] else 'NOT decreasing'}); noisy input "
                     f"{np.mean(r['noisy_psnr']):.2f} dB"))
    return out, rows


# --------------------------------------------------------------------------- loading
def part_loading(args: Any, work: Path, threads: int | None) -> tuple[dict, list[dict]]:
    ds = bench_data.ensure("ref2d", args.cache)
    src = str(ds.zarr_path)
    sidecar = Path(src).with_name(Path(src).name.replace(".ome.zarr", "") + ".patchsieve.zarr")
    for cand in Path(src).parent.glob("*.patchsieve.zarr"):
        shutil.rmtree(cand)  # cold: the filter pass is part of the first run
    common = ["--input", src, "--batch-size", "32", "--num-workers", "0", "--threshold", "300"]
    res: dict[str, Any] = {}
    plan = [("patchsieve_cold", "patchsieve", args.load_steps),
            ("patchsieve_warm", "patchsieve", args.load_steps),
            ("careamics_memory", "careamics_memory", args.load_steps),
            ("careamics_zarr", "careamics_zarr", args.zarr_steps)]
    for label, pipe, steps in plan:
        extra = ["--npy", str(ds.npy_path)] if pipe == "careamics_memory" else []
        res[label] = drive("loading", ["--pipeline", pipe, "--steps", str(steps), "--workdir",
                                       str(work / f"load_{label}"), *common, *extra], threads)
    res["sidecar"] = str(sidecar)
    rows = []
    z = res.get("careamics_zarr")
    mem = res.get("careamics_memory")
    for label in ("patchsieve_cold", "patchsieve_warm"):
        r = res.get(label)
        if r is None:
            continue
        rows.append(h.summary_row(
            f"time to first training step, ref2d, {label}", r["first_step_s"], "s",
            baseline="CAREamics 0.3.5 Zarr path", better="lower",
            baseline_value=None if z is None else z["first_step_s"],
            note="" if mem is None else f"CAREamics in memory (.npy load included): "
                                        f"{mem['first_step_s']:.1f} s"))
        if rows[-1]["baseline_value"]:
            rows[-1]["ratio"] = rows[-1]["baseline_value"] / r["first_step_s"]  # speed-up
            rows[-1]["target"] = ">=5" if label == "patchsieve_cold" else None
            rows[-1]["met"] = rows[-1]["ratio"] >= 5 if label == "patchsieve_cold" else None
    r = res.get("patchsieve_warm") or res.get("patchsieve_cold")
    if r is not None:
        rows.append(h.summary_row(
            "patches/s inside training (no-op step, batch 32, num_workers 0), ref2d",
            r["patches_per_s"], "patches/s", baseline="CAREamics 0.3.5 Zarr path",
            baseline_value=None if z is None else z["patches_per_s"], target=">=20",
            note="" if mem is None else f"CAREamics in memory: {mem['patches_per_s']:.0f} "
                                        "patches/s"))
    return res, rows


# --------------------------------------------------------------------------- memory
def part_memory(args: Any, work: Path, threads: int | None) -> tuple[dict, list[dict]]:
    res: dict[str, Any] = {}
    for name in args.memory_volumes.split(","):
        problem = bench_data.disk_problem(name, args.cache)
        if problem:
            print(f"SKIP memory {name}: {problem}")
            res[name] = {"skipped": problem}
            continue
        ds = bench_data.ensure(name, args.cache)
        src = str(ds.zarr_path)
        for cand in Path(src).parent.glob("*.patchsieve.zarr"):
            shutil.rmtree(cand)
        common = ["--input", src, "--batch-size", "8", "--num-workers", "0", "--threshold",
                  "300", "--steps", str(args.memory_steps)]
        res[name] = {"patchsieve": drive("memory", ["--pipeline", "patchsieve", "--workdir",
                                                    str(work / f"mem_{name}"), *common], threads)}
        if name == "large-2g" and not args.no_careamics:
            res[name]["careamics_memory"] = drive(
                "memory", ["--pipeline", "careamics_memory", "--workdir",
                           str(work / f"mem_{name}_c"), *common], threads)
        elif not args.no_careamics:
            res[name]["careamics_memory"] = {
                "skipped": f"not run: CAREamics' in-memory path holds the volume as float32 "
                           f"({2 * ds.spec.nbytes / 2**30:.0f} GiB) > this machine's RAM"}
    rows = []
    a, b = (res.get(n, {}).get("patchsieve") for n in ("large-2g", "large-16g"))
    if a and b and "driver_peak_rss_bytes" in a and "driver_peak_rss_bytes" in b:
        rows.append(h.summary_row(
            "peak RSS of a training run (filter pass + training), large-16g vs large-2g",
            b["driver_peak_rss_bytes"] / 2**20, "MiB", baseline="same run on large-2g",
            baseline_value=a["driver_peak_rss_bytes"] / 2**20, target="<=1.2", better="lower"))
    c = res.get("large-2g", {}).get("careamics_memory")
    if c and "driver_peak_rss_bytes" in c and a:
        rows.append(h.summary_row(
            "peak RSS, CAREamics 0.3.5 in memory on large-2g (as measured)",
            c["driver_peak_rss_bytes"] / 2**20, "MiB", baseline="patchsieve on large-2g",
            baseline_value=a["driver_peak_rss_bytes"] / 2**20, better="lower",
            note="large-16g: not run (float32 copy 32 GiB > RAM)"))
    return res, rows


def main(argv: list[str] | None = None) -> int:
    ap = h.bench_argparser(__doc__.splitlines()[0])
    ap.add_argument("--parts", default="quality,loading,memory")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--small-steps", type=int, default=150)
    ap.add_argument("--load-steps", type=int, default=600)
    ap.add_argument("--zarr-steps", type=int, default=100)
    ap.add_argument("--memory-steps", type=int, default=20)
    ap.add_argument("--memory-volumes", default="large-2g,large-16g")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.small_steps = "1", 20, 10
        args.load_steps, args.zarr_steps, args.memory_steps = 50, 10, 3
        args.memory_volumes = "large-2g"
    threads = args.threads
    h.set_threads(threads)
    if not h.venv_python(_venv()).exists():
        print(f"SKIP: no CAREamics virtualenv at {_venv()} ({HINT})")
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ps-careamics-train-"))
    payload: dict[str, Any] = {"parts": {}, "summary": [], "workdir": str(work)}
    parts = {"quality": part_quality, "loading": part_loading, "memory": part_memory}
    for name in args.parts.split(","):
        res, rows = parts[name](args, work, threads)
        payload["parts"][name] = res
        payload["summary"].extend(rows)
        h.write_results("careamics_train", payload, args.results)  # partial results kept
    h.print_table("CAREamics training from patchsieve", payload["summary"])
    path = h.write_results("careamics_train", payload, args.results)
    print(f"wrote {path}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
