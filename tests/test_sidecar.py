"""Two writers on one side-car: the second is refused while the first lives; stale locks are taken.

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
