"""The patchsieve command line: --help/--version, compute, sample --audit, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from patchsieve import __version__
from patchsieve.cli import app

runner = CliRunner()


def test_version_and_help():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("compute", "run", "demo", "demo-data", "inspect", "plot", "suggest-threshold",
                "preview", "sample"):
        assert cmd in res.output


@pytest.fixture()
def stack(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.poisson(5, size=(3, 128, 128)).astype(np.uint16)
    data[:, 20:90, 30:100] += 300
    arr = zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, chunks=(1, 64, 64),
                            dtype=data.dtype, dimension_names=("s", "y", "x"))
    arr[...] = data
    return str(tmp_path / "s.zarr")


@pytest.mark.cluster
def test_compute_then_sample_audit(tmp_path, stack):
    out = str(tmp_path / "o.patchsieve.zarr")
    res = runner.invoke(app, ["-q", "compute", stack, "--filter", "mean_std", "--threshold", "50",
                              "--patch", "32,32", "-o", out, "--json", "--n-workers", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["complete"] and 0 < summary["filters"]["mean_std"]["background"]
    res = runner.invoke(app, ["sample", out, "-n", "20", "--json"])
    assert res.exit_code == 0, res.output
    audit = json.loads(res.stdout[res.stdout.index("{"):])
    assert audit["patches"] > 0 and 0 <= audit["realized_background_fraction"] <= 1


def test_compute_bad_patch_is_one_clear_error(stack):
    res = runner.invoke(app, ["compute", stack, "--filter", "shannon", "--threshold", "3",
                              "--patch", "64,a"])
    assert res.exit_code == 2
    assert "--patch must be comma-separated integers" in res.output


def test_compute_missing_threshold(stack):
    res = runner.invoke(app, ["compute", stack, "--filter", "max", "--patch", "32,32"])
    assert res.exit_code == 2 and "--threshold is required" in res.output
