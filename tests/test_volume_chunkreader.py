"""ChunkReader: a stored volume's regions read by key, in the canonical dim order, anywhere."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from patchsieve import open_volume
from patchsieve.volume import ChunkReader, chunk_reader


def test_reads_storage_order_in_canonical_order(tmp_path):
    data = np.arange(2 * 6 * 10 * 4, dtype="uint16").reshape(2, 6, 10, 4)  # stored as C X Y Z
    path = str(tmp_path / "v.zarr")
    arr = zarr.create_array(path, shape=data.shape, chunks=(1, 4, 5, 4), dtype="uint16",
                            dimension_names=("c", "x", "y", "z"))
    arr[...] = data
    vol = open_volume(path)
    assert vol.dims == ("c", "z", "y", "x")
    r = chunk_reader(vol)
    assert isinstance(r, ChunkReader) and r.chunks == (1, 4, 5, 4) and r.numblocks == (2, 1, 2, 2)
    region = (slice(1, 2), slice(0, 3), slice(2, 9), slice(1, 6))
    np.testing.assert_array_equal(r.read(region), vol.data[region].compute())
    # a pickled reader re-opens the source by its URL (what a task on a worker does)
    again = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(again.read(r.block_region((0, 0, 1, 1))),
                                  vol.data[0:1, 0:4, 5:10, 4:6].compute())
    assert "storage_options" not in repr(r)


def test_only_volumes_that_are_their_storage_get_a_reader(tmp_path, write_tiff):
    data = np.arange(4 * 8 * 8, dtype="uint16").reshape(4, 8, 8)
    path = str(tmp_path / "v.zarr")
    zarr.create_array(path, data=data, chunks=(1, 4, 4), dimension_names=("s", "y", "x"))
    vol = open_volume(path)
    assert chunk_reader(vol) is not None
    assert chunk_reader(vol.isel(s=slice(1, 3))) is None  # selected: read through dask
    assert chunk_reader(vol.copy(data=vol.data * 2)) is None  # computed
    assert chunk_reader(open_volume(data, axes="SYX")) is None  # in memory
    tif = write_tiff(tmp_path / "v.tif", data, axes="SYX")
    r = chunk_reader(open_volume(tif))
    assert r is not None and r.kind == "tiff"
    np.testing.assert_array_equal(r.read((slice(0, 4), slice(2, 8), slice(0, 8))), data[:, 2:])


def test_a_corrupt_chunk_is_one_clear_error(tmp_path):
    from patchsieve.errors import DataError

    path = tmp_path / "v.zarr"
    zarr.create_array(str(path), data=np.ones((4, 4), "uint16"), chunks=(2, 2),
                      dimension_names=("y", "x"))
    (path / "c" / "1" / "0").write_bytes(b"garbage")
    r = chunk_reader(open_volume(str(path)))
    with pytest.raises(DataError, match="c/1/0"):
        r.read((slice(2, 4), slice(0, 2)))
