"""patchsieve never modifies a source: every file of the source store is byte-identical after
every command (filter pass via API and CLI, labels, overwrite, inspection, dataset iteration,
the seed-tutorial pipeline), and no file appears in or disappears from it.

The source is a local OME-Zarr (NGFF 0.5, two pyramid levels) plus an OME-Zarr mask, shared by the
module; each test checksums both trees (sha256 of every file, and the set of paths) before and
after one command.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
PATCH = (16, 16)


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (directories as ``<dir>``)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


class Env:
    """The shared source, mask, client and a complete side-car (made on first use)."""

    def __init__(self, root: Path, client: Any) -> None:
        from patchsieve.demo import write_ome_zarr

        self.root, self.client = root, client
        rng = np.random.default_rng(7)
        data = rng.poisson(30, size=(3, 64, 96)).astype(np.uint16)
        data[:, 10:50, 20:70] += rng.poisson(500, size=(3, 40, 50)).astype(np.uint16)
        self.src = write_ome_zarr(root / "data" / "img.ome.zarr", data, "SYX",
                                  chunks=(1, 32, 32), levels=2)
        mask = np.zeros(data.shape, dtype=np.uint8)
        mask[:, 8:56, 16:80] = 1
        self.mask = write_ome_zarr(root / "data" / "mask.ome.zarr", mask, "SYX",
                                   chunks=(1, 32, 32))
        self._sidecar: str | None = None
        self.n = 0

    def out(self, name: str = "out") -> Path:
        self.n += 1
        return self.root / "outputs" / f"{name}-{self.n}.patchsieve.zarr"

    def sidecar(self) -> str:
        if self._sidecar is None:
            from patchsieve import compute

            self._sidecar = compute(self.src, shannon(), PATCH, self.out("shared"),
                                    client=self.client).path
        return self._sidecar

    def digests(self) -> dict[str, dict[str, str]]:
        return {p: tree_digest(Path(p)) for p in (self.src, self.mask)}


def shannon(threshold: float = 5.0) -> Any:
    from patchsieve.config import ShannonPatchFilterConfig

    return ShannonPatchFilterConfig(threshold=threshold)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as c:
        yield Env(tmp_path_factory.mktemp("integrity"), c)


# ----------------------------------------------------------------------------- the commands
def compute_default_output(env: Env) -> None:
    """Default output: beside the source (never inside it)."""
    from patchsieve import compute

    sc = compute(env.src, shannon(), PATCH, client=env.client)
    assert Path(sc.path).parent == Path(env.src).parent
    assert not Path(sc.path).is_relative_to(Path(env.src))


def compute_all_filters_with_labels(env: Env) -> None:
    from patchsieve import compute
    from patchsieve.config import (
        MaskPatchFilterConfig,
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
    )

    filters = {"shannon": shannon(), "max": MaxPatchFilterConfig(threshold=400.0),
               "mean_std": MeanStdPatchFilterConfig(mean_threshold=50.0, std_threshold=5.0),
               "mask": MaskPatchFilterConfig(mask=env.mask, coverage=0.5)}
    assert compute(env.src, filters, PATCH, env.out(), client=env.client, labels=True).is_complete


def compute_level1_then_overwrite(env: Env) -> None:
    from patchsieve import compute

    out = env.out()
    compute(env.src, shannon(), (8, 8), out, client=env.client, level=1)
    compute(env.src, shannon(), (16, 16), out, client=env.client, overwrite=True)


def compute_threshold_change(env: Env) -> None:
    """A rerun with a new threshold only rewrites decisions."""
    from patchsieve import compute

    compute(env.src, shannon(7.0), PATCH, env.sidecar(), client=env.client)
    compute(env.src, shannon(5.0), PATCH, env.sidecar(), client=env.client)


def cli_compute(env: Env) -> None:
    from typer.testing import CliRunner

    from patchsieve.cli import app

    res = CliRunner().invoke(app, ["-q", "compute", env.src, "--filter", "shannon", "-t", "5",
                                   "--patch", "16,16", "-o", str(env.out()), "--no-progress",
                                   "--labels"])
    assert res.exit_code == 0, res.output


def cli_refused_inside_source(env: Env) -> None:
    from typer.testing import CliRunner

    from patchsieve.cli import app

    res = CliRunner().invoke(app, ["compute", env.src, "-t", "5", "--patch", "16,16", "-o",
                                   os.path.join(env.src, "side.patchsieve.zarr")])
    assert res.exit_code == 2 and "inside the source" in res.output


def read_pyramid(env: Env) -> None:
    from patchsieve import open_pyramid, open_volume

    for level in open_pyramid(env.src):
        assert float(level.sum().compute()) > 0
    assert open_volume(env.mask).values.max() == 1


def inspect_sidecar(env: Env) -> None:
    from patchsieve import analysis as ins

    summary = ins.summarize(env.sidecar())
    assert summary
    ins.suggest_threshold(env.sidecar(), background_fraction=0.5)
    ins.preview_patches(env.sidecar(), n=8)


def inspect_apply_threshold_and_plot(env: Env) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from patchsieve import analysis as ins

    ins.apply_threshold(env.sidecar(), "shannon", 6.0)
    ins.plot_filter_maps(env.src, env.root / "maps.png", filters=[shannon()], patch_size=PATCH)
    plt.close("all")


def dataset_iteration(env: Env) -> None:
    from patchsieve import PatchDataset

    ds = PatchDataset(sidecar=env.sidecar(), shuffle_window=0, normalize=True)
    n = sum(1 for _ in ds)
    assert n == len(ds) > 0
    loader = ds.loader(batch_size=8, num_workers=1, multiprocessing_context="fork")
    assert sum(int(b.shape[0]) for b in loader) == len(ds)


def dataset_computes_its_sidecar(env: Env) -> None:
    from patchsieve import PatchDataset

    ds = PatchDataset(env.src, patch_size=(32, 32), patch_filter_config=shannon(),
                      client=env.client)
    assert next(iter(ds)).shape == (1, 32, 32)


def seed_tutorial_pipeline(env: Env) -> None:
    from patchsieve import run_pipeline

    result = run_pipeline(REPO / "pipelines" / "seed-tutorial.yaml", client=env.client,
                          overrides=[f"source.path={env.src}", f"output={env.out('pipe')}",
                                     "patch_size=[16,16]"])
    assert result["sidecars"]


COMMANDS: list[Callable[[Env], None]] = [
    compute_default_output, compute_all_filters_with_labels, compute_level1_then_overwrite,
    compute_threshold_change, cli_compute, cli_refused_inside_source, read_pyramid,
    inspect_sidecar, inspect_apply_threshold_and_plot, dataset_iteration,
    dataset_computes_its_sidecar, seed_tutorial_pipeline,
]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.__name__ for c in COMMANDS])
def test_source_unchanged(env: Env, command: Callable[[Env], None]) -> None:
    if command in (inspect_sidecar, inspect_apply_threshold_and_plot, dataset_iteration,
                   compute_threshold_change):
        env.sidecar()  # made before the "before" checksum: only the command is under test
    before = env.digests()
    assert all(before.values())
    command(env)
    after = env.digests()
    for path in before:
        added = sorted(set(after[path]) - set(before[path]))
        removed = sorted(set(before[path]) - set(after[path]))
        changed = sorted(k for k in before[path] if k in after[path]
                         and before[path][k] != after[path][k])
        assert not (added or removed or changed), (
            f"{command.__name__} modified the source {path}: added {added[:5]}, removed "
            f"{removed[:5]}, changed {changed[:5]}")


def test_digest_detects_changes(tmp_path: Path) -> None:
    """The check can fail: one changed byte, one new file or one removed file is seen."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c0").write_bytes(b"\x01\x02")
    base = tree_digest(tmp_path)
    (tmp_path / "a" / "c0").write_bytes(b"\x01\x03")
    assert tree_digest(tmp_path) != base
    (tmp_path / "a" / "c0").write_bytes(b"\x01\x02")
    (tmp_path / "a" / ".patchsieve-write-probe").write_bytes(b"")
    assert tree_digest(tmp_path) != base
    os.remove(tmp_path / "a" / ".patchsieve-write-probe")
    assert tree_digest(tmp_path) == base
