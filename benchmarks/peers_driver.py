"""Patches/s of peer libraries sampling weighted patches; runs INSIDE a peer virtualenv.

Started by ``_harness.run_peers`` (``benchmarks/.venv-peers``: TorchIO + MONAI with torch
2.13; ``benchmarks/.venv-zarrdataset``: zarrdataset 0.2.2, which needs zarr < 3). Prints ONE
JSON document on stdout (progress goes to stderr).

Peers (``--peers``):

- ``torchio``: ``tio.data.WeightedSampler`` (probability map = the weight map) feeding a
  ``tio.Queue`` (its subject-loading workers = ``num_workers``) read by a ``tio.SubjectsLoader``
  (``num_workers=0``, as TorchIO requires), data in RAM;
- ``monai``: ``RandWeightedCropd(w_key=...)`` with ``num_samples = batch size`` in a
  ``monai.data.Dataset`` + ``monai.data.DataLoader`` (``num_workers``), data in RAM;
- ``zarrdataset``: ``ZarrDataset`` + ``PatchSampler`` over a zarr v2 copy of the data (zstd,
  same chunks; written to ``--workdir`` before timing). zarrdataset has no weighted sampling:
  it samples (shuffled) among patches whose region is inside a binary mask, so the mask is
  "region weight >= 0.5" at patch-grid resolution.

Data: ``--input`` .npy, 2D ``SYX`` (patches ``1 x 64 x 64`` per slice) or 3D ``CZYX`` (patches
``16 x 64 x 64``, all channels returned, weights from ``--ref-channel``). ``--weights`` .npy is
a per-pixel weight map of the reference channel's shape (S,Y,X or Z,Y,X); when absent it is
``1.0 where ref > 300 else 0.1``. Each measurement counts ``--n-patches`` patches (worker
start-up included), median of ``--repeat`` runs, for each ``--num-workers``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- inputs
def load(args):
    arr = np.load(args.input, mmap_mode="r")
    axes = args.axes.upper()
    if axes not in ("SYX", "CZYX", "ZYX"):
        raise SystemExit(f"--axes {axes!r}: use SYX (2D stack), ZYX or CZYX (3D)")
    if len(axes) != arr.ndim:
        raise SystemExit(f"--axes {axes!r} does not match the array's {arr.ndim} dims")
    if args.slices and axes == "SYX":
        arr = arr[: args.slices]
    arr = np.array(arr)  # in RAM and writable (torch warns about read-only arrays)
    if axes == "ZYX":
        arr, axes = arr[None], "CZYX"
    ref = arr[args.ref_channel] if axes == "CZYX" else arr
    if args.weights:
        w = np.load(args.weights, mmap_mode="r")
        if args.slices and axes == "SYX":
            w = w[: args.slices]
        w = np.ascontiguousarray(w, dtype=np.float32)
        if w.shape != ref.shape:
            raise SystemExit(f"--weights shape {w.shape} != reference shape {ref.shape}")
        wsrc = args.weights
    else:
        w = np.where(ref > 300, 1.0, 0.1).astype(np.float32)
        wsrc = "1.0 where reference > 300 else 0.1"
    return arr, axes, w, wsrc


def _count(loader, n, get):
    got, first = 0, None
    t0 = time.perf_counter()
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
        got += get(batch)
        if got >= n:
            break
    return time.perf_counter() - t0, got, first


def _rows(name, nw, runs, extra):
    rates = [g / dt for dt, g, _ in runs]
    return {"peer": name, "num_workers": nw, "patches_per_s": statistics.median(rates),
            "patches_per_s_runs": rates, "runs_s": [dt for dt, _, _ in runs],
            "patches_per_run": [g for _, g, _ in runs],
            "first_batch_s": [f for _, _, f in runs], **extra}


# ----------------------------------------------------------------------------- TorchIO
def run_torchio(args, arr, axes, w, nw):
    import torch
    import torchio as tio

    if axes == "SYX":  # one subject per slice, tensors (C, W, H, D=1)
        imgs = [(torch.from_numpy(np.asarray(s, np.float32))[None, ..., None],
                 torch.from_numpy(ws)[None, ..., None]) for s, ws in zip(arr, w, strict=True)]
        patch = (args.patch_size[-2], args.patch_size[-1], 1)
    else:  # one subject, (C, Z, Y, X) used as (C, W, H, D)
        imgs = [(torch.from_numpy(arr.astype(np.float32)), torch.from_numpy(w)[None])]
        patch = tuple(args.patch_size)
    spv = args.batch_size * 4
    n_subj = max(len(imgs), math.ceil(args.n_patches / spv) + 1)
    subjects = [tio.Subject(img=tio.ScalarImage(tensor=imgs[i % len(imgs)][0]),
                            prob=tio.Image(tensor=imgs[i % len(imgs)][1], type=tio.SAMPLING_MAP))
                for i in range(n_subj)]
    runs = []
    for r in range(args.repeat):
        torch.manual_seed(args.seed + r)
        queue = tio.Queue(tio.SubjectsDataset(subjects), max_length=spv * 2,
                          samples_per_volume=spv,
                          sampler=tio.data.WeightedSampler(patch, probability_map="prob"),
                          num_workers=nw, shuffle_subjects=True, shuffle_patches=True)
        loader = tio.SubjectsLoader(queue, batch_size=args.batch_size, num_workers=0)
        runs.append(_count(loader, args.n_patches, lambda b: b["img"][tio.DATA].shape[0]))
        del loader, queue
    return _rows("torchio", nw, runs, {
        "api": "tio.Queue(SubjectsDataset, WeightedSampler(probability_map)) + SubjectsLoader",
        "samples_per_volume": spv, "patch": list(patch),
        "note": "num_workers = Queue subject-loading workers; SubjectsLoader num_workers=0"})


# ----------------------------------------------------------------------------- MONAI
def run_monai(args, arr, axes, w, nw):
    import torch
    from monai.data import DataLoader, Dataset
    from monai.transforms import RandWeightedCropd

    k = args.batch_size
    if axes == "SYX":
        items = [{"img": np.asarray(s, np.float32)[None], "w": ws[None]}
                 for s, ws in zip(arr, w, strict=True)]
        size = tuple(args.patch_size[-2:])
    else:
        items = [{"img": arr.astype(np.float32), "w": w[None]}]
        size = tuple(args.patch_size)
    n_items = max(len(items), math.ceil(args.n_patches / k))
    data = [items[i % len(items)] for i in range(n_items)]
    runs = []
    for r in range(args.repeat):
        # "w" is cropped too: a key left out is deep-copied once per sample (very slow in 3D)
        crop = RandWeightedCropd(keys=["img", "w"], w_key="w", spatial_size=size,
                                 num_samples=k)
        crop.set_random_state(seed=args.seed + r)
        ds = Dataset(data=data, transform=crop)
        torch.manual_seed(args.seed + r)
        loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=nw,
                            worker_init_fn=_worker_init if nw else None)
        runs.append(_count(loader, args.n_patches, lambda b: b["img"].shape[0]))
        del loader
    return _rows("monai", nw, runs, {
        "api": "monai.data.Dataset(RandWeightedCropd(keys=[img, w], w_key=w, "
               "num_samples=batch)) + DataLoader",
        "spatial_size": list(size), "num_samples": k})


# ----------------------------------------------------------------------------- zarrdataset
def _block_mean_mask(w, patch):
    crop = tuple((s // p) * p for s, p in zip(w.shape, patch, strict=True))
    w = w[tuple(slice(0, c) for c in crop)]
    shp = []
    for c, p in zip(crop, patch, strict=True):
        shp += [c // p, p]
    m = w.reshape(shp).mean(axis=tuple(range(1, 2 * len(patch), 2)))
    return m >= 0.5


def _zarr_v2_copy(arr, chunks, workdir):
    import numcodecs
    import zarr

    path = os.path.join(workdir, "input_v2.zarr")
    z = zarr.open_array(path, mode="w", shape=arr.shape, chunks=chunks, dtype=arr.dtype,
                        compressor=numcodecs.Zstd(level=0))
    z[...] = arr
    return path


def run_zarrdataset(args, arr, axes, w, nw, workdir):
    import torch
    import zarrdataset as zds
    from torch.utils.data import DataLoader

    if axes == "SYX":  # S is sampled as a spatial axis with patch 1
        src_axes, patch, chunks = "ZYX", (1, *args.patch_size[-2:]), (1, 512, 512)
    else:
        src_axes, patch, chunks = "CZYX", tuple(args.patch_size), (1, 32, 256, 256)
    if args.zarr_chunks:
        chunks = tuple(int(c) for c in args.zarr_chunks.split(","))
    t0 = time.perf_counter()
    path = _zarr_v2_copy(arr, chunks, workdir)
    mask = _block_mean_mask(w, patch)
    t_copy = time.perf_counter() - t0

    def init(worker_id):
        zds.zarrdataset_worker_init_fn(worker_id)
        torch.set_num_threads(1)

    runs = []
    for r in range(args.repeat):
        torch.manual_seed(args.seed + r)
        np.random.seed(args.seed + r)
        ds = zds.ZarrDataset(
            [zds.ImagesDatasetSpecs(filenames=path, source_axes=src_axes),
             zds.MasksDatasetSpecs(filenames=mask, source_axes="ZYX")],
            patch_sampler=zds.PatchSampler(patch_size=patch, spatial_axes="ZYX", min_area=0.5),
            shuffle=True, draw_same_chunk=args.draw_same_chunk)
        loader = DataLoader(ds, batch_size=args.batch_size, num_workers=nw,
                            worker_init_fn=init if nw else None)
        runs.append(_count(loader, args.n_patches,
                           lambda b: (b[0] if isinstance(b, (list, tuple)) else b).shape[0]))
        del loader, ds
    return _rows("zarrdataset", nw, runs, {
        "api": "ZarrDataset(Images + Masks specs, PatchSampler(min_area=0.5), shuffle=True)",
        "zarr_v2_chunks": list(chunks), "codec": "Zstd(level=0)", "patch": list(patch),
        "mask_regions_kept": int(mask.sum()), "mask_regions": int(mask.size),
        "prepare_copy_s": t_copy,
        "note": "binary mask (region mean weight >= 0.5), not weights: zarrdataset cannot "
                "weight", "draw_same_chunk": args.draw_same_chunk})


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help=".npy data (SYX or CZYX/ZYX)")
    ap.add_argument("--axes", default="SYX")
    ap.add_argument("--weights", help=".npy per-pixel weights, reference-channel shape")
    ap.add_argument("--patch-size", default=None, help="default 64,64 (SYX) / 16,64,64")
    ap.add_argument("--ref-channel", type=int, default=0)
    ap.add_argument("--slices", type=int, default=0, help="SYX: use the first N slices")
    ap.add_argument("--peers", default="torchio,monai")
    ap.add_argument("--num-workers", default="0,2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-patches", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="zarrdataset: where to write the zarr copy")
    ap.add_argument("--zarr-chunks", default=None, help="zarrdataset: chunks of the copy")
    ap.add_argument("--draw-same-chunk", action="store_true",
                    help="zarrdataset: draw_same_chunk=True (default False, its default)")
    args = ap.parse_args(argv)
    if args.patch_size is None:
        args.patch_size = "64,64" if args.axes.upper() == "SYX" else "16,64,64"
    args.patch_size = [int(v) for v in args.patch_size.split(",")]
    args.num_workers = [int(v) for v in args.num_workers.split(",") if v != ""]
    args.peers = [p for p in args.peers.split(",") if p]
    bad = [p for p in args.peers if p not in ("torchio", "monai", "zarrdataset")]
    if bad:
        ap.error(f"--peers {bad}: choose from torchio, monai, zarrdataset")
    return args


def _versions(peers):
    from importlib import metadata

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for m in ("torch", *peers, "zarr", "numcodecs"):
        try:
            out[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            out[m] = None
    return out


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    arr, axes, w, wsrc = load(args)
    doc = {"tool": "peers", "versions": _versions(args.peers),
           "threads": {"torch_num_threads": torch.get_num_threads(),
                       "torch_num_interop_threads": torch.get_num_interop_threads(),
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                       "worker_torch_threads": 1},
           "cpu_count": os.cpu_count(), "load_avg_1min_start": os.getloadavg()[0],
           "input": {"path": args.input, "axes": axes, "shape": list(arr.shape),
                     "dtype": str(arr.dtype), "patch_size": args.patch_size,
                     "ref_channel": args.ref_channel, "weights": wsrc},
           "batch_size": args.batch_size, "n_patches": args.n_patches, "repeat": args.repeat,
           "results": []}
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for peer in args.peers:
            for nw in args.num_workers:
                log(f"{peer} num_workers={nw} ...")
                t0 = time.perf_counter()
                if peer == "zarrdataset":
                    row = run_zarrdataset(args, arr, axes, w, nw, workdir)
                else:
                    row = globals()[f"run_{peer}"](args, arr, axes, w, nw)
                doc["results"].append(row)
                log(f"  {row['patches_per_s']:.0f} patches/s ({time.perf_counter() - t0:.1f} s)")
    doc["load_avg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(doc, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
