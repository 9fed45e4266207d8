"""Time the real CAREamics (0.3.x) patch filtering; runs INSIDE benchmarks/.venv-careamics.

Started by ``_harness.run_careamics`` as a subprocess (CAREamics pins torch 2.11, so it cannot
live in the project venv). Reads its input from ``.npy`` files, runs the requested phases and
prints ONE JSON document on stdout (progress goes to stderr).

Phases (``--phases``, comma separated):

- ``filter_map``: the static ``{Max,MeanStd,Shannon,Mask}PatchFilter.filter_map(image,
  patch_size)`` over every sample's reference-channel (Z)YX image;
- ``filter_background``: the dataset-creation filtering pass
  ``careamics.dataset.factory.filter_bg.filter_background`` (``filter_background_with_mask``
  for Mask) with each ``*PatchFilterConfig`` on a fresh ``PatchExtractor`` +
  ``StratifiedPatching`` (built outside the timed region; its time is reported separately);
- ``dataloader``: ``create_train_dataset`` with a patch filter, then a torch ``DataLoader``
  (shuffle, ``--batch-size``) at each ``--num-workers``: patches/s over ``--n-patches`` patches
  (worker start-up included) and the first-batch time;
- ``stratified``: ``StratifiedPatching`` epoch draws after ``filter_background`` for one seed;
  ``--export-draws FILE.npz`` writes every drawn (sample, origin) plus the region probabilities,
  so that patchsieve's sampler can be compared statistically.

Every measurement is the median of ``--repeat`` runs, each run's time kept. The calls mirror
``shared/careamics_reference/timing.py`` and ``gen_vectors.py``.

Example::

    benchmarks/.venv-careamics/bin/python benchmarks/careamics_driver.py \\
        --input hagen.npy --axes SYX --patch-size 64,64 --slices 8 --phases filter_map
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # CAREamics wraps its loops in tqdm

import numpy as np  # noqa: E402

ALL_FILTERS = ("max", "meanstd", "shannon", "mask")
DEFAULT_PARAMS = {
    # Max: threshold; coverage None -> 0.5**ndim, as CAREamics' training DataConfig and filter_map
    "max": {"threshold": 300.0, "coverage": None},
    "meanstd": {"mean_threshold": 150.0, "std_threshold": 50.0},
    # Shannon: entropy of float data is ~log2(#pixels) (B5); of integer data ~5.3 here
    "shannon": {"threshold": None},
    "mask": {"coverage": 0.25},
    # mask used when --mask is not given: reference channel > this value
    "mask_rule_threshold": 300.0,
}


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def med(fn, repeat, setup=None):
    """Median of ``repeat`` runs of ``fn()`` (or ``fn(setup())``, setup untimed)."""
    runs, res = [], None
    for _ in range(repeat):
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        res = fn(arg) if setup is not None else fn()
        runs.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(runs), "runs_s": runs, "min_s": min(runs)}, res


# ----------------------------------------------------------------------------- inputs
def load_inputs(args):
    arr = np.load(args.input, mmap_mode="r")
    axes = args.axes.upper()
    if len(axes) != arr.ndim:
        raise SystemExit(f"--axes {axes!r} has {len(axes)} letters but the array has "
                         f"{arr.ndim} dims {arr.shape}; give one letter per dim (e.g. SYX)")
    mask = np.load(args.mask, mmap_mode="r") if args.mask else None
    if mask is not None and mask.shape != arr.shape:
        raise SystemExit(f"--mask shape {mask.shape} != --input shape {arr.shape}")
    if args.slices and "S" in axes:
        sl = [slice(None)] * arr.ndim
        sl[axes.index("S")] = slice(0, args.slices)
        arr = arr[tuple(sl)]
        mask = mask[tuple(sl)] if mask is not None else None
    arr = np.array(arr)  # in RAM, as CAREamics' in-memory dataset holds it
    ref = ref_images(arr, axes, args.ref_channel)
    if mask is None:
        thr = args.params["mask_rule_threshold"]
        if "C" in axes:  # mask with the data's shape: reference channel rule, all channels
            c = axes.index("C")
            one = np.take(arr, args.ref_channel, axis=c) > thr
            mask = np.repeat(np.expand_dims(one, c), arr.shape[c], axis=c)
        else:
            mask = arr > thr
        mask_source = f"reference channel > {thr}"
    else:
        mask = np.ascontiguousarray(mask).astype(bool)
        mask_source = args.mask
    return arr, axes, ref, mask, ref_images(mask, axes, args.ref_channel), mask_source


def ref_images(arr, axes, ref_channel):
    """Per-sample (Z)YX images of the reference channel, as CAREamics' filters see them."""
    if "S" not in axes:
        arr, axes = arr[None], "S" + axes
    if "C" in axes:
        arr = np.take(arr, ref_channel, axis=axes.index("C"))
    return [np.asarray(arr[s]) for s in range(arr.shape[0])]


def configs(args, dtype):
    from careamics.config.data.patch_filter import (
        MaskPatchFilterConfig,
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )

    p, ndim, ref = args.params, len(args.patch_size), args.ref_channel
    cov = p["max"].get("coverage")
    sh = p["shannon"].get("threshold")
    if sh is None:
        sh = 13.9 if np.issubdtype(dtype, np.floating) else 5.3
    return {
        "max": MaxPatchFilterConfig(threshold=p["max"]["threshold"],
                                    coverage=0.5 ** ndim if cov is None else cov, ref_channel=ref),
        "meanstd": MeanStdPatchFilterConfig(mean_threshold=p["meanstd"]["mean_threshold"],
                                            std_threshold=p["meanstd"].get("std_threshold"),
                                            ref_channel=ref),
        "shannon": ShannonPatchFilterConfig(threshold=sh, ref_channel=ref),
        "mask": MaskPatchFilterConfig(coverage=p["mask"]["coverage"]),
    }


# ----------------------------------------------------------------------------- phases
def phase_filter_map(args, data):
    from careamics.dataset.patch_filter import (
        MaskPatchFilter,
        MaxPatchFilter,
        MeanStdPatchFilter,
        ShannonPatchFilter,
    )

    _, _, ref, _, mask_imgs, _ = data
    ps = tuple(args.patch_size)
    nbytes = sum(im.nbytes for im in ref)
    npix = sum(im.size for im in ref)
    cov = args.params["max"].get("coverage")
    cases = {
        "max": lambda: [MaxPatchFilter.filter_map(im, ps, coverage=cov) for im in ref],
        "meanstd": lambda: [MeanStdPatchFilter.filter_map(im, ps) for im in ref],
        "shannon": lambda: [ShannonPatchFilter.filter_map(im, ps) for im in ref],
        "mask": lambda: [MaskPatchFilter.filter_map(m, ps) for m in mask_imgs],
    }
    out = {}
    for name in args.filters:
        log(f"filter_map {name} ...")
        t, _ = med(cases[name], args.repeat)
        t.update(n_images=len(ref), image_shape=list(ref[0].shape), input_bytes=nbytes,
                 pixels=npix, MBps=nbytes / t["median_s"] / 1e6,
                 Mpix_per_s=npix / t["median_s"] / 1e6,
                 note="mask: MaskPatchFilter.filter_map on the boolean mask" if name == "mask"
                 else "")
        out[name] = t
    return out


def build_strategy(arr, axes, ps, seed):
    from careamics.dataset.image_stack_loader import load_arrays
    from careamics.dataset.patch_extractor import PatchExtractor
    from careamics.dataset.patching import StratifiedPatching

    ext = PatchExtractor(load_arrays([arr], axes=axes))
    return ext, StratifiedPatching(ext.shapes, patch_size=list(ps), seed=seed)


def run_filter_background(cfg, name, arr, axes, mask, ps, seed):
    """Fresh extractor + strategy (timed separately), then the filtering pass."""
    from careamics.dataset.factory.filter_bg import (
        filter_background,
        filter_background_with_mask,
    )

    t0 = time.perf_counter()
    ext, strat = build_strategy(arr, axes, ps, seed)
    mext = None
    if name == "mask":
        mext, _ = build_strategy(mask, axes, ps, seed)
    setup_s = time.perf_counter() - t0

    def run():
        n0 = strat.n_patches
        if name == "mask":
            filter_background_with_mask(cfg, strat, mext)
        else:
            filter_background(cfg, strat, ext)
        return n0, strat.n_patches

    return ext, strat, setup_s, run


def phase_filter_background(args, data):
    arr, axes, ref, mask, _, _ = data
    ps = tuple(args.patch_size)
    cfgs = configs(args, arr.dtype)
    nbytes = sum(im.nbytes for im in ref)
    npix = sum(im.size for im in ref)
    out = {}
    for name in args.filters:
        log(f"filter_background {name} ...")
        setups = []

        def setup(name=name, setups=setups):
            _, _, s, run = run_filter_background(cfgs[name], name, arr, axes, mask, ps, args.seed)
            setups.append(s)
            return run

        t, (n0, n1) = med(lambda run: run(), args.repeat, setup)
        t.update(config=cfgs[name].model_dump(), n_patches_before=n0, n_patches_after=n1,
                 setup_extractor_plus_stratified_s=setups, input_bytes_ref_channel=nbytes,
                 pixels=npix, MBps=nbytes / t["median_s"] / 1e6,
                 Mpix_per_s=npix / t["median_s"] / 1e6,
                 function="filter_background_with_mask" if name == "mask" else
                 "filter_background")
        out[name] = t
    return out


def make_dataset(args, arr, axes, mask, pf):
    from careamics.config.factories.data_factory import create_data_configuration
    from careamics.dataset.factory.factory import TrainValData, create_train_dataset

    cfg = create_data_configuration(
        data_type="array", axes=axes, patch_size=list(args.patch_size),
        batch_size=args.batch_size, patch_filter_config=pf, num_workers=0, seed=args.seed)
    val = arr[:2] if axes.startswith("S") else arr
    data = TrainValData(train_data=[arr], val_data=[val],
                        train_data_mask=[mask] if (pf is not None and pf.name == "mask") else None)
    t0 = time.perf_counter()
    ds = create_train_dataset(cfg, data, loading=None)
    return ds, time.perf_counter() - t0


def time_loader(ds, nw, args):
    """Patches/s over ``n_patches`` (epochs repeated when the dataset is shorter).

    Workers are persistent across those epochs (steady state); worker start-up is included in
    the run time and reported on its own as the first-batch time.
    """
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data._utils.collate import default_collate

    runs, first, shape, epochs = [], [], None, []
    for _ in range(args.repeat):
        dl = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=nw,
                        collate_fn=default_collate, persistent_workers=nw > 0,
                        generator=torch.Generator().manual_seed(args.seed))
        n, ep = 0, 0
        t0 = time.perf_counter()
        while n < args.n_patches:
            ep += 1
            for batch in dl:
                if n == 0:
                    first.append(time.perf_counter() - t0)
                    shape = list(batch[0].data.shape)
                n += batch[0].data.shape[0]
                if n >= args.n_patches:
                    break
        runs.append((time.perf_counter() - t0, n))
        epochs.append(ep)
        del dl
    rates = [n / dt for dt, n in runs]
    return {"patches_per_s_median": statistics.median(rates), "patches_per_s_runs": rates,
            "runs_s_and_patches": runs, "epochs_per_run": epochs, "first_batch_s": first,
            "batch_shape": shape}


def phase_dataloader(args, data):
    arr, axes, _, mask, _, _ = data
    cfgs = configs(args, arr.dtype)
    out = []
    for name in args.loader_filters:
        pf = None if name == "none" else cfgs[name]
        log(f"dataloader {name}: create_train_dataset ...")
        ds, t_create = make_dataset(args, arr, axes, mask, pf)
        for nw in args.num_workers:
            log(f"dataloader {name} num_workers={nw} ...")
            row = {"patch_filter": name, "num_workers": nw, "batch_size": args.batch_size,
                   "dataset_len": len(ds), "create_train_dataset_s": t_create,
                   "n_patches_per_run": args.n_patches,
                   "note": "worker start-up included (persistent workers across epochs); "
                           "shuffle=True; CAREamics default augmentations; array in RAM"}
            row.update(time_loader(ds, nw, args))
            out.append(row)
        del ds
    return out


def phase_stratified(args, data):
    arr, axes, _, mask, _, _ = data
    ps = tuple(args.patch_size)
    name = args.stratified_filter
    cfg = configs(args, arr.dtype)[name]
    ext, strat, _, run = run_filter_background(cfg, name, arr, axes, mask, ps, args.seed)
    n0, n1 = run()
    S = ext.shapes[0][0]
    gs = tuple(strat.image_patching[0][0].grid_shape)
    probs = np.ones((S, *gs))
    for s in range(S):
        ip = strat.image_patching[0][s]
        inv = {idx: gc for gc, idx in ip.grid_coords.items()}
        for idx, p in ip.relative_probs.items():
            probs[(s, *inv[idx])] = p
    samples = np.empty((args.epochs, n1), np.int64)
    coords = np.empty((args.epochs, n1, len(ps)), np.int64)
    times = []
    for e in range(args.epochs):
        t0 = time.perf_counter()
        for i in range(n1):
            spec = strat.get_patch_spec(i)
            samples[e, i] = spec["sample_idx"]
            coords[e, i] = spec["coords"]
        times.append(time.perf_counter() - t0)
    out = {"filter": name, "config": cfg.model_dump(), "seed": args.seed, "epochs": args.epochs,
           "n_patches_before": n0, "n_patches_per_epoch": n1, "grid_shape": list(gs),
           "n_regions": int(probs.size), "n_background_regions": int((probs < 1).sum()),
           "epoch_draw_s": times, "draws_per_s": n1 / statistics.median(times)}
    if args.export_draws:
        np.savez_compressed(args.export_draws, sample_idx=samples, coords=coords,
                            region_probs=probs, grid_shape=np.array(gs),
                            patch_size=np.array(ps), data_shape=np.array(ext.shapes[0]),
                            seed=args.seed, filter=name,
                            config=json.dumps(cfg.model_dump()))
        out["export_draws"] = args.export_draws
    return out


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help=".npy file with the data")
    ap.add_argument("--axes", default="SYX", help="CAREamics axes of --input (SYX, CZYX...)")
    ap.add_argument("--patch-size", default="64,64", help="spatial patch size, e.g. 16,64,64")
    ap.add_argument("--mask", help=".npy boolean mask, same shape as --input (Mask filter)")
    ap.add_argument("--slices", type=int, default=0, help="use only the first N samples (S)")
    ap.add_argument("--ref-channel", type=int, default=0)
    ap.add_argument("--phases", default="filter_map,filter_background,dataloader")
    ap.add_argument("--filters", default=",".join(ALL_FILTERS))
    ap.add_argument("--loader-filters", default="none,max,shannon",
                    help="patch filters for the dataloader phase ('none' = no filter)")
    ap.add_argument("--params", default="{}", help="JSON overriding DEFAULT_PARAMS per filter")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--num-workers", default="0,2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-patches", type=int, default=4096, help="patches per dataloader run")
    ap.add_argument("--seed", type=int, default=1, help="> 0 (CAREamics DataConfig rule)")
    ap.add_argument("--epochs", type=int, default=1, help="stratified: epochs to draw")
    ap.add_argument("--stratified-filter", default="max", choices=ALL_FILTERS)
    ap.add_argument("--export-draws", help="stratified: write the draws to this .npz")
    args = ap.parse_args(argv)
    args.patch_size = [int(v) for v in args.patch_size.split(",")]
    args.num_workers = [int(v) for v in args.num_workers.split(",") if v != ""]
    args.phases = [p for p in args.phases.split(",") if p]
    args.filters = [f for f in args.filters.split(",") if f]
    args.loader_filters = [f for f in args.loader_filters.split(",") if f]
    params = json.loads(json.dumps(DEFAULT_PARAMS))
    for k, v in json.loads(args.params).items():
        if isinstance(v, dict):
            params.setdefault(k, {}).update(v)
        else:
            params[k] = v
    args.params = params
    bad = [p for p in args.phases if "phase_" + p not in globals()]
    bad += [f for f in args.filters + args.loader_filters if f not in (*ALL_FILTERS, "none")]
    if bad:
        ap.error(f"unknown phase/filter {bad}; phases: filter_map, filter_background, "
                 f"dataloader, stratified; filters: {', '.join(ALL_FILTERS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import careamics
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_inputs(args)
    arr = data[0]
    doc = {
        "tool": "careamics", "careamics": careamics.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "threads": {"torch_num_threads": torch.get_num_threads(),
                    "torch_num_interop_threads": torch.get_num_interop_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")},
        "cpu_count": os.cpu_count(), "load_avg_1min_start": os.getloadavg()[0],
        "input": {"path": args.input, "axes": data[1], "shape": list(arr.shape),
                  "dtype": str(arr.dtype), "nbytes": int(arr.nbytes),
                  "ref_channel": args.ref_channel, "patch_size": args.patch_size,
                  "slices": args.slices, "mask": data[5]},
        "params": args.params, "repeat": args.repeat, "phases": {},
    }
    for phase in args.phases:
        t0 = time.perf_counter()
        doc["phases"][phase] = globals()["phase_" + phase](args, data)
        log(f"phase {phase} done in {time.perf_counter() - t0:.1f} s")
    try:
        import resource

        doc["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover - Windows
        pass
    doc["load_avg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(doc, default=lambda o: o.item() if hasattr(o, "item") else str(o),
                     allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
