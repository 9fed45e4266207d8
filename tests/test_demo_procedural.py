"""Procedural volumes (patchsieve.demo._procedural): any size, served from a seed, counted."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr

from patchsieve.demo import describe_procedural, procedural_url, served_chunks
from patchsieve.errors import ConfigError


def test_url_opens_everywhere_a_volume_opens(tmp_path):
    import patchsieve as ps
    from patchsieve.volume import open_zarr_array

    url = procedural_url((40, 200, 300), (16, 64, 64), seed=2)
    vol = ps.open_volume(url, storage_options={"counts": str(tmp_path)})
    assert vol.dims == ("z", "y", "x") and vol.shape == (40, 200, 300)
    assert vol.dtype == np.uint16 and vol.data.chunksize == (16, 64, 64)
    block = vol.data[16:32, 64:128, :64].compute()
    # blobs on a Poisson-like background: not constant, in the camera-count range
    assert block.std() > 1 and 0 < block.mean() < 2000
    arr = open_zarr_array(url, storage_options={"counts": str(tmp_path)})
    np.testing.assert_array_equal(arr[16:32, 64:128, :64], block)
    counts = served_chunks(tmp_path, url)
    assert counts == {(1, 1, 0): 2}


def test_same_url_same_bytes_other_seed_other_data():
    url = procedural_url((32, 128, 128), (16, 64, 64), seed=1)
    a = zarr.open_array(url, mode="r")[...]
    b = zarr.open_array(url, mode="r")[...]
    c = zarr.open_array(procedural_url((32, 128, 128), (16, 64, 64), seed=5), mode="r")[...]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # chunks are picked by their coordinates: a volume is not one chunk repeated
    chunks = {a[i:i + 16, j:j + 64, k:k + 64].tobytes() for i in (0, 16) for j in (0, 64)
              for k in (0, 64)}
    assert len(chunks) > 2


def test_chunks_are_encoded_with_the_declared_codec():
    import fsspec

    url = procedural_url((16, 64, 64), (16, 64, 64), seed=0)
    fs = fsspec.filesystem("procedural")
    root = url[len("procedural://"):]
    meta = fs.cat_file(f"{root}/zarr.json")
    assert b'"zstd"' in meta
    raw = fs.cat_file(f"{root}/c/0/0/0")
    import numcodecs

    decoded = np.frombuffer(numcodecs.Zstd().decode(raw), dtype="<u2").reshape(16, 64, 64)
    np.testing.assert_array_equal(decoded, zarr.open_array(url, mode="r")[...])
    assert len(raw) < decoded.nbytes  # compressed, as real data is
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{root}/c/9/0/0")  # outside the chunk grid
    with pytest.raises(PermissionError):
        fs.pipe_file(f"{root}/c/0/0/0", b"x")


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_other_dtypes_and_codecs(dtype):
    url = procedural_url((8, 64, 64), (8, 32, 32), dtype=dtype, codec="blosc")
    arr = zarr.open_array(url, mode="r")
    x = arr[...]
    assert x.dtype == np.dtype(dtype) and x.max() > x.min()
    assert describe_procedural(url)["codec"] == "blosc"


def test_counts_add_up_over_processes(tmp_path):
    """Each process writes its own counter file; served_chunks adds them up."""
    url = procedural_url((16, 128, 128), (16, 64, 64), seed=3)
    code = ("import zarr, sys; a = zarr.open_array(sys.argv[1], mode='r', "
            "storage_options={'counts': sys.argv[2]}); a[:, :64, :]")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code, url, str(tmp_path)], check=True, timeout=120)
    zarr.open_array(url, mode="r", storage_options={"counts": str(tmp_path)})[:, 64:, 64:]
    assert served_chunks(tmp_path, url) == {(0, 0, 0): 2, (0, 0, 1): 2, (0, 1, 1): 1}
    assert served_chunks(tmp_path, procedural_url((16, 128, 128), (16, 64, 64))) == {}
    assert len(list(tmp_path.glob("*.bin"))) == 3


def test_eleven_terabytes_open_without_disk():
    import patchsieve as ps

    url = procedural_url((4096, 40960, 32768), (16, 256, 256))
    vol = ps.open_volume(url)
    info = describe_procedural(url)
    assert vol.nbytes == info["nbytes"] > 10**13
    assert info["n_chunks"] == 5_242_880
    assert int(vol.data[4000:4001, 40000:40001, 30000:30001].compute().size) == 1


@pytest.mark.parametrize("url, match", [
    ("procedural://64x64x0?chunks=16x16x16", "positive"),
    ("procedural://64x64?chunks=16x16x16", "chunks"),
    ("procedural://64x64?dtype=complex64", "integer or float"),
    ("procedural://64x64?color=red", "unknown parameter"),
    ("procedural://64xA", "bad procedural URL"),
])
def test_bad_urls_name_the_fix(url, match):
    with pytest.raises(ConfigError, match=match):
        describe_procedural(url)


def test_demo_data_virtual_prints_the_url():
    from typer.testing import CliRunner

    from patchsieve.cli import app

    res = CliRunner().invoke(app, ["demo-data", "--virtual", "4096x40960x32768",
                                   "--chunks", "16x256x256"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == \
        "procedural://4096x40960x32768?chunks=16x256x256&dtype=uint16&seed=0"
    assert "11 TB, 5,242,880 chunks" in res.output
