"""Training runs of CAREamics 0.3.5, fed by patchsieve or by CAREamics itself (runs inside
``benchmarks/.venv-careamics``; prints one JSON document). Used by ``bench_careamics_train.py``.

    python careamics_train_driver.py quality --pipeline patchsieve --dims 2 --algo n2v \\
        --seed 1 --steps 300 --workdir DIR
    python careamics_train_driver.py loading --pipeline careamics_zarr --input ref.ome.zarr \\
        --npy ref.npy --steps 150 --batch-size 32 --workdir DIR
    python careamics_train_driver.py memory --pipeline patchsieve --input vol.ome.zarr \\
        --steps 20 --workdir DIR

Pipelines: ``patchsieve`` (``patchsieve.careamics.train`` on a Zarr path), ``careamics_memory``
(``careamist.train`` on numpy arrays, ``data_type="array"``), ``careamics_zarr``
(``careamist.train`` on a Zarr group, ``data_type="zarr"``, lazy).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PIPELINES = ("patchsieve", "careamics_memory", "careamics_zarr")


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def _write_plain(path: Path, data: np.ndarray, dims: tuple[str, ...]) -> str:
    import zarr

    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                          chunks=(1, *data.shape[1:]), dimension_names=dims, overwrite=True)
    z[...] = data
    return str(path)


def _write_group(path: Path, data: np.ndarray) -> str:
    """A Zarr group holding one array: what CAREamics' Zarr path reads (not a bare array)."""
    import zarr

    g = zarr.open_group(str(path), mode="w")
    a = g.create_array("data", shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]))
    a[...] = data
    return str(path)


def _psnr(pred: np.ndarray, clean: np.ndarray) -> float:
    mse = float(np.mean((pred.astype(np.float64) - clean) ** 2))
    rng = float(clean.max() - clean.min())
    return 10.0 * np.log10(rng * rng / mse)


# --------------------------------------------------------------------------- quality
def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Train, then predict held-out images and compare with their clean copies."""
    from careamics import CAREamist
    from careamics.config import create_advanced_care_config, create_advanced_n2v_config

    import patchsieve.careamics as psc
    from patchsieve.demo import poisson_blobs

    _quiet()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.dims == 2:
        n_train, n_test, shape, ps, batch = 8, 2, (256, 256), [64, 64], 16
        axes, pred_axes, tile, dims = "SYX", "YX", (128, 128), ("s", "y", "x")
    else:
        n_train, n_test, shape, ps, batch = 3, 1, (32, 128, 128), [16, 64, 64], 4
        axes, pred_axes, tile, dims = "SZYX", "ZYX", None, ("s", "z", "y", "x")
    clean, noisy = poisson_blobs(n_train + n_test, shape, seed=args.data_seed)
    target = clean[:n_train] if args.algo == "care" else None
    data_type = {"patchsieve": "zarr", "careamics_memory": "array",
                 "careamics_zarr": "zarr"}[args.pipeline]
    common = dict(experiment_name=f"q{args.dims}d", data_type=data_type, axes=axes,
                  patch_size=ps, batch_size=batch, num_epochs=100000, num_workers=0,
                  trainer_params={"max_steps": args.steps}, seed=args.seed)
    if args.algo == "n2v":
        cfg = create_advanced_n2v_config(**common)
    else:
        cfg = create_advanced_care_config(**common)
    cm = CAREamist(cfg, work_dir=work / args.pipeline, enable_progress_bar=False)
    t0 = time.perf_counter()
    if args.pipeline == "patchsieve":
        src = _write_plain(work / "noisy.zarr", noisy[:n_train], dims)
        tgt = None if target is None else _write_plain(work / "clean.zarr", target, dims)
        psc.train(cm, src, target=tgt)
    elif args.pipeline == "careamics_memory":
        cm.train(train_data=noisy[:n_train], train_data_target=target)
    else:
        src = _write_group(work / "noisy_group.zarr", noisy[:n_train])
        tgt = None if target is None else _write_group(work / "clean_group.zarr", target)
        cm.train(train_data=src, train_data_target=tgt)
    train_s = time.perf_counter() - t0
    psnrs, mses = [], []
    for i in range(n_train, n_train + n_test):
        kw: dict[str, Any] = {"data_type": "array", "axes": pred_axes, "in_memory": True}
        if tile is not None:
            kw["tile_size"] = tile
        if args.algo == "care":
            kw["output_axes"] = pred_axes
        pred, _ = cm.predict(noisy[i], **kw)
        p = np.asarray(pred[0]).squeeze()
        psnrs.append(_psnr(p, clean[i]))
        mses.append(float(np.mean((p - clean[i]) ** 2)))
    losses = cm.get_losses()
    return {"pipeline": args.pipeline, "dims": args.dims, "algo": args.algo, "seed": args.seed,
            "steps": args.steps, "train_s": train_s, "psnr": psnrs,
            "psnr_mean": float(np.mean(psnrs)), "mse": mses,
            "noisy_psnr": [_psnr(noisy[i], clean[i]) for i in range(n_train, n_train + n_test)],
            "train_loss": [float(v) for v in losses.train_loss.value],
            "normalization": cm.config.data_config.normalization.model_dump(),
            "sizes": {"train": [n_train, *shape], "test": [n_test, *shape], "patch": ps,
                      "batch": batch}}


# --------------------------------------------------------------------------- loading
class _Clock:
    """Records the wall time of every training step of a no-op model."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.steps: list[float] = []
        self.patches = 0

    def step(self, batch: Any) -> None:
        self.steps.append(time.perf_counter())
        self.patches += int(batch[0].data.shape[0])


def _noop_model(cm: Any, clock: _Clock) -> None:
    """Replace the training and validation steps by a no-op: the loop measures the loader."""

    def training_step(batch: Any, batch_idx: int) -> None:
        clock.step(batch)
        return None

    cm.model.training_step = training_step
    cm.model.validation_step = lambda batch, batch_idx: None


def _loading_config(args: argparse.Namespace, data_type: str, dims: int) -> Any:
    from careamics.config import create_advanced_n2v_config
    from careamics.config.data.patch_filter import MaxPatchFilterConfig

    if dims == 2:
        axes, ps = "SYX", [64, 64]
    else:
        axes, ps = "ZYX", [16, 64, 64]
    return create_advanced_n2v_config(
        experiment_name="load", data_type=data_type, axes=axes, patch_size=ps,
        batch_size=args.batch_size, num_epochs=100000, num_workers=args.num_workers,
        trainer_params={"max_steps": args.steps, "limit_val_batches": 0,
                        "num_sanity_val_steps": 0},
        lr_scheduler="StepLR", lr_scheduler_params={"step_size": 10**6},
        model_params={"depth": 1, "num_channels_init": 8},
        patch_filter_config=MaxPatchFilterConfig(threshold=args.threshold)
        if args.pipeline != "patchsieve" else None,
        seed=1, n_val_patches=8)


def _run_loop(args: argparse.Namespace, dims: int) -> dict[str, Any]:
    from careamics import CAREamist

    import patchsieve.careamics as psc
    from patchsieve import MaxPatchFilterConfig

    _quiet()
    data_type = "array" if args.pipeline == "careamics_memory" else "zarr"
    cm = CAREamist(_loading_config(args, data_type, dims), work_dir=args.workdir,
                   enable_progress_bar=False)
    cm.trainer.limit_val_batches = 0
    clock = _Clock()
    _noop_model(cm, clock)
    t_load = 0.0
    if args.pipeline == "patchsieve":
        clock.t0 = time.perf_counter()
        psc.train(cm, args.input, patch_filter_config=MaxPatchFilterConfig(
            threshold=args.threshold))
    elif args.pipeline == "careamics_memory":
        t = time.perf_counter()
        data = np.load(args.npy) if args.npy else np.asarray(_open_level0(args.input)[...])
        t_load = time.perf_counter() - t
        clock.t0 = time.perf_counter() - t_load
        cm.config.training_config.trainer_params["limit_val_batches"] = 0
        _train_no_val(cm, data)
    else:
        clock.t0 = time.perf_counter()
        _train_no_val(cm, args.input)
    s = clock.steps
    rate = (len(s) - 1) * args.batch_size / (s[-1] - s[0]) if len(s) > 1 else None
    return {"pipeline": args.pipeline, "steps": len(s), "batch_size": args.batch_size,
            "num_workers": args.num_workers, "first_step_s": s[0] - clock.t0 if s else None,
            "load_into_memory_s": t_load, "patches_per_s": rate,
            "loop_s": s[-1] - s[0] if s else None}


def _train_no_val(cm: Any, data: Any) -> None:
    """``careamist.train`` (it resets limit_val_batches to 1.0: set it back to 0 first)."""
    import lightning.pytorch as pl

    orig = pl.Trainer.fit

    def fit(self: Any, *a: Any, **k: Any) -> Any:
        self.limit_val_batches = 0
        return orig(self, *a, **k)

    pl.Trainer.fit = fit  # type: ignore[method-assign]
    try:
        cm.train(train_data=data)
    finally:
        pl.Trainer.fit = orig  # type: ignore[method-assign]


def _open_level0(path: str) -> Any:
    import zarr

    g = zarr.open_group(path, mode="r")
    return g[sorted(g.array_keys())[0]]


def loading(args: argparse.Namespace) -> dict[str, Any]:
    """Data loading inside training: time to the first step and patches/s (no-op model)."""
    return _run_loop(args, 2)


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """A short training run on a large 3D volume (peak RSS measured by the caller)."""
    out = _run_loop(args, 3)
    import psutil

    out["self_peak_rss_bytes"] = psutil.Process().memory_info().rss
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("part", choices=("quality", "loading", "memory"))
    ap.add_argument("--pipeline", choices=PIPELINES, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--dims", type=int, default=2, choices=(2, 3))
    ap.add_argument("--algo", default="n2v", choices=("n2v", "care"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--input", default=None)
    ap.add_argument("--npy", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)
    fn = {"quality": quality, "loading": loading, "memory": memory}[args.part]
    doc = fn(args)
    import careamics
    import torch

    doc.update(part=args.part, careamics=careamics.__version__, torch=torch.__version__)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
