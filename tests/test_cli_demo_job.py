"""The job behind `make demo` (patchsieve demo) on the small demo data."""

from __future__ import annotations

import pytest


@pytest.mark.cluster
def test_demo_job_small(tmp_path):
    from patchsieve import open_sidecar
    from patchsieve.cli._demo_job import run_demo

    lines = run_demo(tmp_path / "data", tmp_path / "out", size="small")
    text = "\n".join(lines)
    assert "hagen2d.patchsieve.zarr" in text and "vol3d2c.patchsieve.zarr" in text
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 4 and all(p.stat().st_size > 5000 for p in pngs)
    sc = open_sidecar(tmp_path / "out" / "hagen2d.patchsieve.zarr")
    assert sc.is_complete and (tmp_path / "out" / "hagen2d.patchsieve.zarr" / "labels").is_dir()
    assert 0 < sc.filter_out("shannon").mean() < 1
