"""Tests of the out-of-core benchmark plumbing (benchmarks/bench_large.py, the disk check and
delete offer of data.py, run_all's --large set). Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_large as BL  # noqa: E402
import data as D  # noqa: E402
import run_all as RA  # noqa: E402


def _tiny(tmp_path) -> D.Dataset:
    spec = D.SPECS["large-2g"].resized("tiny-large", (8, 64, 64), (8, 32, 32))
    return D.ensure(spec, tmp_path)


def _small_disk(monkeypatch, free: int = 1024) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(D.shutil, "disk_usage", lambda p: usage(10, 10, free))


def test_run_all_large_set_is_separate_from_the_default_run():
    default = [p.stem for p in RA.discover(large=False)]
    large = [p.stem for p in RA.discover(large=True)]
    assert large == ["bench_large"]
    assert "bench_large" not in default and "bench_baselines" in default
    assert "bench_large" in [p.stem for p in RA.discover()]
    # --only picks explicitly, whatever --large says
    assert [p.stem for p in RA.discover(["baselines"], large=True)] == ["bench_baselines"]


def test_disk_problem_names_the_fix_and_ignores_cached_datasets(tmp_path, monkeypatch):
    ds = _tiny(tmp_path)
    _small_disk(monkeypatch)
    msg = D.disk_problem(D.SPECS["large-ram"], tmp_path)
    assert msg and "large-ram" in msg and "PATCHSIEVE_BENCH_CACHE" in msg
    assert D.disk_problem(ds.spec, tmp_path) is None  # cached: nothing to write


def test_offer_delete_prints_the_command_and_asks_only_when_interactive(tmp_path):
    ds = _tiny(tmp_path)
    said: list[str] = []
    asked: list[str] = []
    assert D.offer_delete([ds.spec.name, "absent"], tmp_path, interactive=False,
                          ask=lambda q: asked.append(q) or "y", out=said.append) == []
    assert not asked and ds.root.is_dir() and len(said) == 1
    assert f"python benchmarks/data.py --cache {tmp_path} delete tiny-large" in said[0]
    assert D.offer_delete([ds.spec.name], tmp_path, interactive=True, ask=lambda q: "n",
                          out=said.append) == []
    assert ds.root.is_dir()
    assert D.offer_delete([ds.spec.name], tmp_path, interactive=True, ask=lambda q: "yes",
                          out=said.append) == ["tiny-large"]
    assert not ds.root.exists()


def test_delete_command_default_cache(monkeypatch):
    monkeypatch.delenv("PATCHSIEVE_BENCH_CACHE", raising=False)
    assert D.delete_command("large-ram") == "python benchmarks/data.py delete large-ram"


def test_bench_large_skips_with_a_message_when_the_disk_is_too_small(tmp_path, monkeypatch,
                                                                      capsys):
    _small_disk(monkeypatch)
    rc = BL.main(["--large", "--cache", str(tmp_path / "cache"), "--results", str(tmp_path)])
    assert rc == 0
    assert "SKIP the out-of-core set" in capsys.readouterr().out
    doc = json.loads((tmp_path / "bench_large.json").read_text())
    assert doc["skipped"][0]["dataset"] == "large-ram" and doc["summary"] == []
    assert not (tmp_path / "cache" / "large-ram").exists()


def test_bench_large_accepts_the_run_all_flags(tmp_path):
    assert RA.script_args(BENCH / "bench_large.py", True, True, tmp_path, []) == [
        "--large", "--quick", "--results", str(tmp_path)]


@pytest.mark.slow
def test_bench_large_quick_smoke(tmp_path):
    env = {**os.environ, "PATCHSIEVE_BENCH_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "bench_large.py"), "--quick",
                           "--repeat", "1", "--filters", "meanstd", "--batches", "2",
                           "--results", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((tmp_path / "bench_large.json").read_text())
    whats = [r["what"] for r in doc["summary"]]
    assert any(w.startswith("(1) plain Dask read") for w in whats)
    assert any("peak RSS whole job" in w for w in whats)
    assert any("first batch" in w for w in whats)
    assert all(r["value"] is not None and r["value"] > 0 for r in doc["summary"])
    assert "python benchmarks/data.py" in proc.stdout and "delete large-ram-quick" in proc.stdout
