"""Tests of the benchmark harness pieces (benchmarks/_harness.py, data.py, run_all.py,
bench_baselines.py helpers). Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _harness as H  # noqa: E402
import bench_baselines as BB  # noqa: E402
import data as D  # noqa: E402
import run_all as RA  # noqa: E402

SHARED_REF = Path(__file__).resolve().parent.parent.parent / "shared" / "careamics_reference"


# ----------------------------------------------------------------------------- timing
def test_median_time_returns_median_of_runs_and_last_result():
    calls = []
    t = H.median_time(lambda: calls.append(1) or len(calls), repeat=5)
    assert len(calls) == 5 and len(t.runs_s) == 5
    assert t.median_s == sorted(t.runs_s)[2]
    assert t.result == 5
    assert set(t.as_dict()) == {"median_s", "runs_s", "min_s"}


def test_median_time_passes_setup_value_and_warms_up():
    seen = []
    t = H.median_time(lambda x: seen.append(x), repeat=3, setup=lambda: "fresh", warmup=2)
    assert seen == ["fresh"] * 5 and len(t.runs_s) == 3


def test_median_time_rejects_zero_repeat():
    with pytest.raises(ValueError, match="repeat"):
        H.median_time(lambda: None, repeat=0)


# ----------------------------------------------------------------------------- memory
ALLOC = "import numpy as np, time; a = np.ones({mib} * 2**20 // 8); a += 1; time.sleep({s})"


def test_run_with_peak_rss_sees_a_child_allocation():
    small = H.run_with_peak_rss([sys.executable, "-c", ALLOC.format(mib=1, s=0.3)])
    big = H.run_with_peak_rss([sys.executable, "-c", ALLOC.format(mib=300, s=0.3)])
    assert small.returncode == 0 and big.returncode == 0
    assert big.peak_rss_bytes >= 250 * 2**20
    assert big.peak_rss_bytes - small.peak_rss_bytes >= 200 * 2**20


def test_peak_rss_includes_grandchildren_only_when_asked():
    code = textwrap.dedent(f"""
        import subprocess, sys
        subprocess.run([sys.executable, "-c", {ALLOC.format(mib=300, s=0.6)!r}], check=True)
    """)
    tree = H.run_with_peak_rss([sys.executable, "-c", code])
    alone = H.run_with_peak_rss([sys.executable, "-c", code], include_children=False)
    assert tree.returncode == 0 and alone.returncode == 0
    assert tree.peak_rss_bytes >= 250 * 2**20
    assert alone.peak_rss_bytes < 200 * 2**20
    assert tree.extra["peak_processes"] >= 2


def test_peak_rss_context_manager_on_own_process():
    with H.PeakRSS(interval=0.005) as rss:
        a = np.ones(100 * 2**20 // 8)
        a += 1
        rss.sample()
    assert rss.peak_bytes - rss.baseline_bytes >= 80 * 2**20
    assert rss.as_dict()["samples"] >= 2


# ----------------------------------------------------------------------------- ratios, JSON
def test_ratio_and_summary_row_targets():
    assert H.ratio(10.0, 2.0) == 5.0
    assert H.ratio(1.0, 0) is None and H.ratio(None, 1.0) is None
    row = H.summary_row("x", 50.0, "MB/s", baseline="b", baseline_value=10.0, target=">=5")
    assert row["ratio"] == 5.0 and row["met"] is True
    row = H.summary_row("y", 30.0, "s", baseline="read", baseline_value=10.0, target="<=2.5",
                        better="lower")
    assert row["met"] is False
    assert H.summary_row("z", 1.0, "s")["met"] is None
    with pytest.raises(ValueError, match="target"):
        H.summary_row("w", 1.0, "s", baseline_value=1.0, target="about 5")
    with pytest.raises(ValueError, match="better"):
        H.summary_row("w", 1.0, "s", better="faster")


def test_write_results_adds_metadata_and_serialises_numpy(tmp_path):
    path = H.write_results("unit", {"value": np.float32(1.5), "arr": np.arange(3),
                                    "path": Path("a/b"), "summary": []}, tmp_path)
    doc = json.loads(path.read_text())
    assert path == tmp_path / "unit.json"
    assert doc["name"] == "unit" and doc["value"] == 1.5 and doc["arr"] == [0, 1, 2]
    assert doc["path"] == "a/b" and "T" in doc["timestamp"]
    assert doc["machine"]["cores_logical"] >= 1 and doc["machine"]["memory_total_bytes"] > 0
    assert doc["versions"]["numpy"] == np.__version__
    assert "env" in doc["threads"]
    with pytest.raises(ValueError, match="name"):
        H.write_results("../evil", {}, tmp_path)


def test_machine_info_and_versions_shapes():
    m = H.machine_info()
    assert m["cores_usable"] >= 1 and m["cpu_model"]
    v = H.versions(extra=["definitely_not_a_module_xyz"])
    assert v["definitely_not_a_module_xyz"] is None and v["python"]


def test_print_table_renders_rows(capsys):
    H.print_table("t", [{"a": 1.23456, "b": None, "c": True}, {"a": 12345.6, "b": "x"}])
    out = capsys.readouterr().out
    assert "12,346" in out and "1.23" in out and "yes" in out


# ----------------------------------------------------------------------------- other venvs
def test_run_careamics_returns_none_when_venv_missing(tmp_path, capsys):
    res = H.run_careamics(["filter_map"], {"input": "x.npy", "axes": "SYX",
                                            "patch_size": (64, 64)}, venv=tmp_path / "none")
    assert res is None
    assert "careamics-env.sh" in capsys.readouterr().out


def test_inputs_to_args_maps_every_key():
    args = H._inputs_to_args({"input": "a.npy", "axes": "CZYX", "patch_size": (16, 64, 64),
                              "num_workers": [0, 2], "params": {"max": {"threshold": 3}},
                              "slices": 8, "mask": None})
    assert args[:4] == ["--input", "a.npy", "--axes", "CZYX"]
    assert "--patch-size" in args and "16,64,64" in args and "0,2" in args
    assert json.loads(args[args.index("--params") + 1]) == {"max": {"threshold": 3}}
    with pytest.raises(ValueError, match="unknown"):
        H._inputs_to_args({"bogus": 1})


def test_run_venv_driver_parses_json_and_reports_failures(tmp_path, capsys):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    ok = tmp_path / "ok.py"
    ok.write_text("import json, sys; print('noise', file=sys.stderr); "
                  "print(json.dumps({'argv': sys.argv[1:]}))")
    doc = H.run_venv_driver(tmp_path / "venv", ok, ["--x", "1"], setup_hint="hint")
    assert doc["argv"] == ["--x", "1"] and doc["driver_peak_rss_bytes"] > 0
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('boom')")
    assert H.run_venv_driver(tmp_path / "venv", bad, [], setup_hint="hint") is None
    assert "boom" in capsys.readouterr().out


# ----------------------------------------------------------------------------- data cache
def tiny(kind: str) -> D.Spec:
    sizes = {"large-2g": ((20, 70, 90), (8, 32, 32)), "vol3d": ((2, 8, 40, 40), (1, 4, 32, 32)),
             "ref2d": ((2, 64, 64), (1, 32, 32))}
    shape, chunks = sizes[kind]
    return D.SPECS[kind].resized(f"tiny-{kind}", shape, chunks)


@pytest.mark.parametrize("kind", ["large-2g", "vol3d", "ref2d"])
def test_ensure_writes_readable_ome_zarr_and_reuses_it(tmp_path, kind):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    spec = tiny(kind)
    ds = D.ensure(spec, tmp_path)
    arr = ds.open_zarr()
    assert arr.shape == spec.shape and arr.chunks == spec.chunks and str(arr.dtype) == spec.dtype
    node = list(Reader(parse_url(str(ds.zarr_path)))())[0]
    assert [a["name"] for a in node.metadata["axes"]] == list(spec.axes)
    full = arr[...]
    assert full.std() > 0
    if spec.npy:
        assert np.array_equal(ds.load_npy(), full)
    stamp = ds.root / "stamp.json"
    mtime = stamp.stat().st_mtime_ns
    again = D.ensure(spec, tmp_path)
    assert again.root == ds.root and stamp.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not list(tmp_path.glob(".*tmp*"))


def test_large_generation_is_deterministic_and_chunk_order_free(tmp_path):
    spec = tiny("large-2g")
    a = D.ensure(spec, tmp_path / "a", workers=1).open_zarr()[...]
    b = D.ensure(spec, tmp_path / "b", workers=2).open_zarr()[...]
    assert np.array_equal(a, b)
    fg = (a > 300).mean()
    assert 0.05 < fg < 0.6  # blobby foreground on a Poisson-like background
    assert abs(float(np.median(a[a < 150])) - 100.0) < 10  # Poisson(100) background


def test_concurrent_ensure_generates_once(tmp_path, monkeypatch):
    import concurrent.futures as cf

    calls = []
    real = D._GENERATORS["large"]

    def counting(spec, out, workers):
        calls.append(out)
        real(spec, out, workers)

    monkeypatch.setitem(D._GENERATORS, "large", counting)
    spec = tiny("large-2g")
    with cf.ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: D.ensure(spec, tmp_path).root, range(2)))
    assert roots[0] == roots[1] and len(calls) == 1
    assert D.cached(spec, tmp_path) is not None


def test_stale_stamp_triggers_regeneration(tmp_path):
    spec = tiny("large-2g")
    ds = D.ensure(spec, tmp_path)
    (ds.root / "stamp.json").write_text(json.dumps({"generator_version": -1}))
    assert D.cached(spec, tmp_path) is None
    ds2 = D.ensure(spec, tmp_path)
    assert D.cached(spec, tmp_path) is not None and ds2.open_zarr().shape == spec.shape


def test_reference_slices_match_shared_make_data():
    if not (SHARED_REF / "make_data.py").exists():
        pytest.skip(f"{SHARED_REF} is absent (sdist build)")
    sys.path.insert(0, str(SHARED_REF))
    try:
        import make_data
    finally:
        sys.path.remove(str(SHARED_REF))
    ref = make_data.make_2d_stack(np.random.default_rng(0), n=2, yx=(64, 64))
    ours = np.stack(list(D.reference_slices(2, (64, 64), seed=0)))
    assert np.array_equal(ref, ours)


def test_vol3d_reference_channel_is_denser():
    vol = D.two_channel_volume((2, 8, 64, 64), seed=1)
    assert vol.dtype == np.uint16
    assert (vol[1] > 300).mean() > 1.5 * (vol[0] > 300).mean()


def test_insufficient_disk_is_reported_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(D.shutil, "disk_usage", lambda p: usage(10, 10, 1024))
    with pytest.raises(D.InsufficientDiskError, match="PATCHSIEVE_BENCH_CACHE"):
        D.ensure(tiny("large-2g"), tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_delete_and_list_and_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHSIEVE_BENCH_CACHE", str(tmp_path))
    assert D.cache_dir() == tmp_path
    D.ensure(tiny("ref2d"))
    assert D.delete("tiny-ref2d") == ["tiny-ref2d"]
    assert D.delete() == []
    rows = D.list_cache()
    assert {r["name"] for r in rows} == set(D.SPECS) and not any(r["cached"] for r in rows)
    with pytest.raises(KeyError, match="unknown"):
        D.ensure("nope")


def test_large_specs_meet_the_claimed_sizes():
    assert D.SPECS["large-4g"].nbytes >= 4 * 2**30
    assert D.SPECS["large-16g"].nbytes == 8 * D.SPECS["large-2g"].nbytes
    assert D.SPECS["large-ram"].nbytes > 24 * 2**30


# ----------------------------------------------------------------------------- baselines
def test_aligned_origins_are_on_the_patch_grid():
    o = BB.aligned_origins((2, 64, 256, 256), (1, 16, 64, 64), 500, seed=3, fixed={0: 1})
    assert o.shape == (500, 4) and (o[:, 0] == 1).all()
    assert (o[:, 1] % 16 == 0).all() and (o[:, 2:] % 64 == 0).all()
    assert o[:, 1].max() <= 48 and o[:, 2:].max() <= 192


def test_baseline_functions_run_on_tiny_data(tmp_path):
    ds = D.ensure(tiny("vol3d"), tmp_path)
    read = BB.dask_read(ds.array_path, "threads", repeat=1)
    assert read["nbytes"] == ds.spec.nbytes and read["peak_rss_bytes"] > 0
    rows = BB.one_read_per_patch(ds.array_path, (1, 4, 16, 16), 20, fixed={0: 1}, repeat=1,
                                 num_workers=(0,))
    assert [r["mode"] for r in rows] == ["plain loop", "torch DataLoader"]
    assert all(r["patches_per_s"] > 0 for r in rows)
    cut = BB.cut_from_decoded(ds.array_path, (1, 4, 16, 16), 50, fixed={0: 1}, repeat=1)
    assert cut["decode_and_cut_patches"] == cut["n_chunks_decoded"] * cut["patches_per_chunk"]


# ----------------------------------------------------------------------------- run_all
def test_run_all_discovers_and_renders_summary(tmp_path):
    names = [p.stem for p in RA.discover()]
    assert "bench_baselines" in names
    with pytest.raises(SystemExit, match="no such benchmark"):
        RA.discover(["nonexistent"])
    row = H.summary_row("filter_map Max", 500.0, "MB/s", baseline="CAREamics",
                        baseline_value=20.0, target=">=5")
    H.write_results("demo", {"summary": [row]}, tmp_path)
    md = RA.render_summary(RA.load_results(tmp_path),
                           [{"script": "bench_demo.py", "status": "ok", "wall_s": 1.0}])
    assert "## demo" in md and "| filter_map Max | 500 | MB/s | CAREamics | 20.0 | 25.0 | >=5 |" \
        " yes |" in md
    assert "bench_demo.py" in md


def test_run_all_summary_only_cli(tmp_path):
    H.write_results("demo", {"summary": []}, tmp_path)
    env = {**os.environ, "PATCHSIEVE_BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--summary-only",
                           "--results", str(tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "## demo" in (tmp_path / "summary.md").read_text()


def test_derived_npy_slices_and_rounds(tmp_path):
    ds = D.ensure(tiny("ref2d"), tmp_path)
    p1 = ds.derived_npy(1)
    p2 = ds.derived_npy(2, "uint16")
    full = ds.load_npy()
    assert np.array_equal(np.load(p1), full[:1])
    rounded = np.load(p2)
    assert rounded.dtype == np.uint16
    assert np.array_equal(rounded, np.clip(np.rint(full), 0, 65535).astype(np.uint16))
    assert ds.derived_npy(1) == p1
    with pytest.raises(ValueError, match="slices"):
        ds.derived_npy(5)


# ------------------------------------------------------------------- drivers (numpy parts)
def test_careamics_driver_args_and_reference_images():
    import careamics_driver as CD

    args = CD.parse_args(["--input", "x.npy", "--params", '{"max": {"threshold": 5}}',
                          "--patch-size", "16,64,64", "--num-workers", "0"])
    assert args.params["max"] == {"threshold": 5, "coverage": None}
    assert args.params["meanstd"]["mean_threshold"] == 150.0
    assert args.patch_size == [16, 64, 64] and args.num_workers == [0]
    with pytest.raises(SystemExit):
        CD.parse_args(["--input", "x.npy", "--phases", "nope"])
    czyx = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    imgs = CD.ref_images(czyx, "CZYX", 1)
    assert len(imgs) == 1 and np.array_equal(imgs[0], czyx[1])
    syx = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    assert [im.shape for im in CD.ref_images(syx, "SYX", 0)] == [(4, 5)] * 3


def test_peers_driver_block_mask_and_args():
    import peers_driver as PD

    w = np.full((2, 128, 128), 0.1, np.float32)
    w[:, :64, :64] = 1.0
    m = PD._block_mean_mask(w, (1, 64, 64))
    assert m.shape == (2, 2, 2) and m.sum() == 2 and m[:, 0, 0].all()
    args = PD.parse_args(["--input", "x.npy", "--axes", "CZYX"])
    assert args.patch_size == [16, 64, 64] and args.peers == ["torchio", "monai"]
    with pytest.raises(SystemExit):
        PD.parse_args(["--input", "x.npy", "--peers", "albumentations"])


def test_run_all_passes_only_flags_a_script_accepts(tmp_path):
    script = tmp_path / "bench_fake.py"
    script.write_text("import argparse\n"
                      "ap = argparse.ArgumentParser()\n"
                      "ap.add_argument('--quick', action='store_true')\n"
                      "ap.parse_args()\n")
    assert RA.script_args(script, False, True, tmp_path, []) == ["--quick"]
    assert RA.script_args(script, False, False, tmp_path, ["--x"]) == ["--x"]
    assert RA.script_args(script, True, False, tmp_path, []) is None  # no large mode
    full = BENCH / "bench_baselines.py"
    assert RA.script_args(full, True, True, tmp_path, []) == [
        "--large", "--quick", "--results", str(tmp_path)]
