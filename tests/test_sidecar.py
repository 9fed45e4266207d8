"""The side-car package: its write lock (the main part: two writers on one side-car), its reader
API and its writer.

Lock: the second writer is refused while the first lives; stale locks are taken.

patchsieve's choice (documented in ``docs/sidecar-format.md`` and ``docs/errors.md``): one compute
per output. ``patchsieve.lock`` in the side-car root holds the writer's host, pid and heartbeat; a
second ``compute`` on the same output is refused with :class:`SidecarLockedError` naming the owner
while the owner lives, and a lock whose owner is gone (dead pid on this host, or a heartbeat older
than ``LOCK_STALE_AFTER``) is taken over.

The first writer is a real ``patchsieve compute`` process (client + LocalCluster workers in its own
process group). It is frozen with SIGSTOP once it holds the lock and is writing blocks, so the
second writer is checked against a live owner deterministically, whatever the machine's load.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

pytestmark = pytest.mark.cluster

PATCH = (16, 16)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as c:
        yield c


def write_source(path: Path, chunk: int = 16) -> str:
    """(8, 128, 128) uint16; 16x16 chunks give 512 blocks, so runs last long enough to catch."""
    rng = np.random.default_rng(5)
    data = rng.poisson(20, size=(8, 128, 128)).astype(np.uint16)
    data[:, 30:90, 40:110] += rng.poisson(300, size=(8, 60, 70)).astype(np.uint16)
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, chunk, chunk), dtype=data.dtype,
                            dimension_names=("s", "y", "x"), overwrite=True)
    arr[...] = data
    return str(path)


def shannon() -> Any:
    from patchsieve.config import ShannonPatchFilterConfig

    return ShannonPatchFilterConfig(threshold=4.5)


def cli(src: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "patchsieve.cli", "-q", "compute", src, "--filter", "shannon",
            "--threshold", "4.5", "--patch", ",".join(map(str, PATCH)), "-o", str(out),
            "--no-progress", *extra]


def markers(out: Path) -> int:
    try:
        g = zarr.open_group(str(out), mode="r")
        return sum(int(np.asarray(g["progress"][k][...]).sum())
                   for k in g["progress"].array_keys())
    except Exception:  # noqa: BLE001 - not written yet
        return 0


def lock_info(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "patchsieve.lock").read_text())
    except (OSError, ValueError):
        return None


class Writer:
    """A ``patchsieve compute`` process group that can be frozen, resumed and killed."""

    def __init__(self, cmd: list[str]) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self.pid = self.proc.pid

    def wait_until(self, predicate: Any, what: str, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                pytest.fail(f"the first compute ended before {what}: {err[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        os.killpg(self.pid, sig)

    def finish(self, timeout: float = 300.0) -> int:
        self.proc.wait(timeout=timeout)
        if self.proc.stderr:
            self.proc.stderr.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        if self.proc.stderr:
            self.proc.stderr.close()


def incomplete_sidecar(src: str, out: Path) -> None:
    """A side-car whose first run was killed mid-way (its output exists, markers are partial)."""
    first = Writer(cli(src, out))
    first.wait_until(lambda: markers(out) > 0, "the first block markers")
    first.kill()


def test_second_writer_refused_then_stale_lock_taken_over(
        tmp_path: Path, client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A live owner (frozen mid-run) refuses API and CLI writers; once SIGKILLed, its lock is stale.

    The owner resumes a side-car whose first run was killed, so the output already exists and the
    lock is held from the start of the run.
    """
    from patchsieve import compute, open_sidecar
    from patchsieve.errors import SidecarIncompleteError, SidecarLockedError

    src = write_source(tmp_path / "src.zarr")
    out = tmp_path / "shared.patchsieve.zarr"
    incomplete_sidecar(src, out)
    before = markers(out)
    owner = Writer(cli(src, out))
    try:
        owner.wait_until(lambda: (lock_info(out) or {}).get("pid") == owner.pid
                         and markers(out) > before, "the lock and new blocks")
        owner.signal(signal.SIGSTOP)  # alive and holding the lock, frozen mid-run
        with pytest.raises(SidecarLockedError) as info:
            compute(src, shannon(), PATCH, out, client=client)
        msg = str(info.value)
        assert f"pid {owner.pid}" in msg and repr(socket.gethostname()) in msg, msg
        res = subprocess.run(cli(src, out), capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, PYTHONWARNINGS="ignore"))
        assert res.returncode == 2, res.stderr[-2000:]
        assert "locked by another running compute" in res.stderr
        assert f"pid {owner.pid}" in res.stderr
        assert lock_info(out)["pid"] == owner.pid  # the refused writers left the lock alone
    finally:
        owner.kill()  # SIGKILL reaches stopped processes too
    stale = lock_info(out)
    assert stale is not None and stale["pid"] == owner.pid  # left behind by the dead owner
    with pytest.raises(SidecarIncompleteError):
        open_sidecar(out)
    caplog.set_level(logging.WARNING, logger="patchsieve.sidecar")
    sc = compute(src, shannon(), PATCH, out, client=client)
    assert any("taking over a stale side-car lock" in r.getMessage() for r in caplog.records)
    assert sc.is_complete and lock_info(out) is None
    clean = compute(src, shannon(), PATCH, tmp_path / "clean.patchsieve.zarr", client=client)
    for name in sc.stats:
        np.testing.assert_array_equal(sc.stats[name], clean.stats[name])
    np.testing.assert_array_equal(sc.weights("shannon"), clean.weights("shannon"))


@pytest.mark.parametrize(("host", "age", "taken"), [
    ("other-host.example", 10.0, False),    # live elsewhere: refused
    ("other-host.example", 3600.0, True),   # heartbeat older than LOCK_STALE_AFTER: stale
    (None, 3600.0, True),                   # this host, dead pid: stale
])
def test_lock_staleness_rules(tmp_path: Path, client: Any, host: str | None, age: float,
                              taken: bool) -> None:
    from patchsieve import compute
    from patchsieve.errors import SidecarLockedError

    src = write_source(tmp_path / "src.zarr", chunk=64)
    out = tmp_path / "o.patchsieve.zarr"
    out.mkdir()
    info = {"host": host or socket.gethostname(), "pid": 2**22 + 4321 if host is None else 1,
            "token": "someone", "heartbeat": time.time() - age, "started": "earlier"}
    (out / "patchsieve.lock").write_text(json.dumps(info))
    if taken:
        assert compute(src, shannon(), PATCH, out, client=client).is_complete
        assert lock_info(out) is None
    else:
        with pytest.raises(SidecarLockedError, match="other-host.example"):
            compute(src, shannon(), PATCH, out, client=client)
        assert lock_info(out) == info


def test_fresh_output_refuses_a_second_writer_mid_run(tmp_path: Path, client: Any) -> None:
    """A first run on a new output holds the lock while it writes blocks (creating the new group
    keeps the lock: catalogue row ``sidecar-lock-fresh-output`` checks the moment before the first
    block deterministically)."""
    from patchsieve import compute, open_sidecar
    from patchsieve.errors import SidecarLockedError

    src = write_source(tmp_path / "src.zarr")
    out = tmp_path / "fresh.patchsieve.zarr"
    owner = Writer(cli(src, out))
    try:
        owner.wait_until(lambda: markers(out) > 0, "the first block markers")
        owner.signal(signal.SIGSTOP)
        assert (lock_info(out) or {}).get("pid") == owner.pid
        with pytest.raises(SidecarLockedError, match=f"pid {owner.pid}"):
            compute(src, shannon(), PATCH, out, client=client)
    finally:
        owner.signal(signal.SIGCONT)
    assert owner.finish() == 0
    assert open_sidecar(out).is_complete


# --------------------------------------------------------------------------- reader and writer
@pytest.fixture(scope="module")
def small_sidecar(tmp_path_factory: pytest.TempPathFactory, client: Any) -> Any:
    from patchsieve import compute
    from patchsieve.config import MeanStdPatchFilterConfig

    root = tmp_path_factory.mktemp("sc")
    src = write_source(root / "src.zarr", chunk=32)
    return compute(src, {"shannon": shannon(), "ms": MeanStdPatchFilterConfig(mean_threshold=30)},
                   PATCH, str(root / "src.patchsieve.zarr"), client=client)


def test_geometry_is_one_frozen_object_round_tripped_through_the_attrs(small_sidecar: Any) -> None:
    from patchsieve.grid import VolumeGeometry

    g = small_sidecar.geometry
    assert isinstance(g, VolumeGeometry)
    assert VolumeGeometry.from_attrs(g.to_attrs(), small_sidecar.attrs["source"]) == g
    assert g.to_attrs() == small_sidecar.attrs["geometry"]
    assert (g.sample_shape, g.spatial_shape, g.patch_size) == ((8,), (128, 128), PATCH)
    assert g.grid_shape == small_sidecar.grid_shape == (8, 8)
    assert g.region_shape == (8, 8, 8) and g.cell_shape == (8, 8)
    with pytest.raises(AttributeError):
        g.patch_size = (8, 8)  # type: ignore[misc]


def test_resolve_filter_by_name_config_or_the_only_one(small_sidecar: Any) -> None:
    from patchsieve.errors import ConfigError, SidecarMismatchError

    sc = small_sidecar
    assert sc.resolve_filter("ms") == "ms"
    assert sc.resolve_filter(config=shannon()) == "shannon"
    with pytest.raises(ConfigError, match="has filters"):
        sc.resolve_filter()
    with pytest.raises(ConfigError, match="not in side-car"):
        sc.resolve_filter("nope")
    from patchsieve.config import ShannonPatchFilterConfig

    with pytest.raises(SidecarMismatchError, match="is not in side-car"):
        sc.resolve_filter(config=ShannonPatchFilterConfig(threshold=9.0))


def test_require_patch_size_and_progress(small_sidecar: Any) -> None:
    from patchsieve.errors import SidecarMismatchError

    small_sidecar.require_patch_size(PATCH)
    small_sidecar.require_patch_size(None)
    with pytest.raises(SidecarMismatchError, match="differs from the side-car"):
        small_sidecar.require_patch_size((32, 32))
    progress = small_sidecar.progress()
    assert progress and all(v["done"] == v["total"] > 0 for v in progress.values())


def test_is_sidecar(small_sidecar: Any, tmp_path: Path) -> None:
    from patchsieve.sidecar import is_sidecar

    assert is_sidecar(small_sidecar.path)
    assert not is_sidecar(write_source(tmp_path / "plain.zarr"))
    assert not is_sidecar(tmp_path / "missing")


def test_writer_takes_the_lock_and_change_filter_rewrites_decisions(
        tmp_path: Path, client: Any) -> None:
    from patchsieve import compute, open_sidecar
    from patchsieve.config import ShannonPatchFilterConfig
    from patchsieve.errors import SidecarLockedError
    from patchsieve.sidecar import LOCK_NAME, SidecarWriter

    src = write_source(tmp_path / "src.zarr", chunk=32)
    out = str(tmp_path / "a.patchsieve.zarr")
    compute(src, shannon(), PATCH, out, client=client)
    new = ShannonPatchFilterConfig(threshold=6.0)
    with SidecarWriter(out) as writer:
        assert (tmp_path / "a.patchsieve.zarr" / LOCK_NAME).exists()
        with pytest.raises(SidecarLockedError, match="locked by another running compute"):
            SidecarWriter(out).__enter__()
        writer.change_filter("shannon", new)
    assert not (tmp_path / "a.patchsieve.zarr" / LOCK_NAME).exists()
    fresh = compute(src, new, PATCH, str(tmp_path / "b.patchsieve.zarr"), client=client)
    changed = open_sidecar(out)
    np.testing.assert_array_equal(changed.filter_out("shannon"), fresh.filter_out("shannon"))
    np.testing.assert_array_equal(changed.weights("shannon"), fresh.weights("shannon"))
    assert changed.config("shannon") == new and changed.is_complete


def test_block_log_writes_values_before_markers(tmp_path: Path) -> None:
    import zarr

    from patchsieve.sidecar import SidecarLock, block_slices

    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    values = g.create_array("v", shape=(4, 6), chunks=(2, 3), dtype="float64", fill_value=np.nan)
    marker = g.create_array("m", shape=(2, 2), chunks=(2, 2), dtype="uint8", fill_value=0)
    from patchsieve.sidecar import BlockLog

    log = BlockLog({"v": values}, marker, SidecarLock(g.store))
    assert log.todo() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    log.put((1, 0), block_slices((1, 0), (2, 3), (4, 6)), {"v": np.ones((2, 3))})
    # the first block is flushed at once (a rerun sees progress early): values, then marker
    assert np.asarray(marker[...]).tolist() == [[0, 0], [1, 0]]
    assert np.all(np.asarray(values[2:4, 0:3]) == 1) and np.isnan(np.asarray(values[0, 0]))
    log.put((0, 1), block_slices((0, 1), (2, 3), (4, 6)), {"v": np.full((2, 3), 2.0)})
    assert np.asarray(marker[...]).tolist() == [[0, 0], [1, 0]]  # buffered, not marked yet
    log.flush()
    assert np.asarray(marker[...]).tolist() == [[0, 1], [1, 0]]
    assert np.all(np.asarray(values[0:2, 3:6]) == 2)
    assert BlockLog({"v": values}, marker, SidecarLock(g.store)).todo() == [(0, 0), (1, 1)]

