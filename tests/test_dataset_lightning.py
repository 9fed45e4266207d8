"""Tests of patchsieve.lightning.PatchDataModule with a real Lightning Trainer (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")

from patchsieve.config import MaxPatchFilterConfig  # noqa: E402
from patchsieve.demo import write_ome_zarr  # noqa: E402
from patchsieve.lightning import PatchDataModule  # noqa: E402

pytestmark = pytest.mark.cluster  # the side-car is computed with an in-process LocalCluster


class _TinyModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.seen: list[tuple[int, tuple[int, ...]]] = []

    def training_step(self, batch, batch_idx):
        x, meta = batch
        self.seen.extend(
            (int(s), tuple(o.tolist())) for s, o in zip(meta["sample"], meta["origin"], strict=True)
        )
        return torch.nn.functional.mse_loss(self.conv(x / 500.0), x / 500.0)

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.conv(x / 500.0), x / 500.0))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightning")
    rng = np.random.default_rng(0)
    data = rng.poisson(20, size=(2, 96, 128)).astype(np.uint16)
    data[:, 20:60, 30:90] += 500
    src = write_ome_zarr(root / "img.ome.zarr", data, "SYX", chunks=(1, 48, 64))
    from distributed import Client, LocalCluster

    from patchsieve.compute import compute

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl,
        Client(cl, set_as_default=False) as c,
    ):
        sc = compute(
            src, [MaxPatchFilterConfig(threshold=200.0)], (32, 32), root / "img.patchsieve.zarr", client=c
        )
    return src, sc


def _trainer(epochs):
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_fit_streams_each_epoch_plan(volume):
    src, sc = volume
    dm = PatchDataModule(
        src,
        sidecar=sc,
        batch_size=8,
        num_workers=0,
        return_metadata=True,
        seed=4,
        val_kwargs={"source": src, "sidecar": sc, "return_metadata": True},
    )
    model = _TinyModel()
    _trainer(2).fit(model, datamodule=dm)
    ds = dm.train_dataset
    assert ds is not None and ds.epoch == 1
    per_epoch = len(ds)
    assert len(model.seen) == 2 * per_epoch
    for epoch in (0, 1):
        plan = ds.sampler.epoch_plan(epoch)
        want = sorted((int(p["sample"]), tuple(p["origin"].tolist())) for p in plan)
        got = sorted(model.seen[epoch * per_epoch : (epoch + 1) * per_epoch])
        assert got == want


def test_fit_with_persistent_workers(volume):
    src, sc = volume
    assert PatchDataModule(src, num_workers=2).multiprocessing_context == "spawn"  # the default
    # fork here only to keep the test fast; spawn is covered in test_dataset.py
    dm = PatchDataModule(
        src, sidecar=sc, batch_size=16, num_workers=2, return_metadata=True, multiprocessing_context="fork"
    )
    assert dm.persistent_workers
    model = _TinyModel()
    _trainer(2).fit(model, datamodule=dm)
    n = len(dm.train_dataset)
    assert len(model.seen) == 2 * n
    assert sorted(model.seen[:n]) != sorted(model.seen[n:])  # two different epoch plans


def test_state_dict_round_trip(volume):
    src, sc = volume
    dm = PatchDataModule(src, sidecar=sc, batch_size=4, return_metadata=True, seed=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = dm.state_dict()
    assert state["train"]["positions"] == [12]
    dm2 = PatchDataModule(src, sidecar=sc, batch_size=4, return_metadata=True, seed=2)
    dm2.load_state_dict(state)
    rest = list(dm2.train_dataloader())
    full = list(
        PatchDataModule(src, sidecar=sc, batch_size=4, return_metadata=True, seed=2).train_dataloader()
    )
    keys = [tuple(b[1]["origin"].flatten().tolist()) for b in first + rest]
    assert keys == [tuple(b[1]["origin"].flatten().tolist()) for b in full]
