"""The side-car's advisory write lock (``patchsieve.lock`` in its root)."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from patchsieve.errors import SidecarLockedError
from patchsieve.sidecar._format import LOCK_NAME, LOCK_STALE_AFTER, now
from patchsieve.volume import delete_key, read_key, write_key, write_key_if_absent

logger = logging.getLogger(__name__)


@dataclass
class SidecarLock:
    """An advisory write lock stored as ``patchsieve.lock`` in the side-car root.

    The lock records the owner's host, pid and a heartbeat. A lock is *stale* (and taken over) when
    its owner is a dead process on this host, or its heartbeat is older than ``LOCK_STALE_AFTER``
    seconds. A second live writer gets :class:`SidecarLockedError` naming the owner.
    """

    store: Any
    token: str = ""

    def _read(self) -> dict[str, Any] | None:
        buf = read_key(self.store, LOCK_NAME)
        if buf is None:
            return None
        try:
            return json.loads(buf.decode())
        except ValueError:
            return {"host": "?", "pid": -1, "heartbeat": 0.0}

    @staticmethod
    def _is_stale(info: Mapping[str, Any]) -> bool:
        import time

        if info.get("host") == socket.gethostname():
            pid = int(info.get("pid", -1))
            if pid <= 0:
                return True
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            # same host, live pid: stale only if the pid was recycled long ago (heartbeat very old)
        return time.time() - float(info.get("heartbeat", 0.0)) > LOCK_STALE_AFTER

    def acquire(self) -> None:
        """Take the lock atomically (create-if-absent) or raise :class:`SidecarLockedError`."""
        import secrets

        self.token = secrets.token_hex(8)
        for _ in range(3):
            if write_key_if_absent(self.store, LOCK_NAME, self._payload(now())):
                return
            info = self._read()
            if info is None:  # released in between: try again
                continue
            if not self._is_stale(info):
                raise SidecarLockedError(
                    f"output side-car is locked by another running compute (host "
                    f"{info.get('host')!r}, pid {info.get('pid')}, since {info.get('started')}). "
                    f"Fix: wait for it to finish, or remove {LOCK_NAME!r} from the side-car if "
                    "that process is gone."
                )
            logger.warning("taking over a stale side-car lock held by pid %s on %s",
                           info.get("pid"), info.get("host"))
            delete_key(self.store, LOCK_NAME)
        raise SidecarLockedError(
            "output side-car lock is contended by other computes. Fix: run one compute per output."
        )

    def _payload(self, started: str) -> bytes:
        import time

        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "started": started, "heartbeat": time.time()}).encode()

    def _write(self, started: str | None = None) -> None:
        prev = self._read() or {}
        write_key(self.store, LOCK_NAME, self._payload(started or prev.get("started", now())))

    def heartbeat(self) -> None:
        """Refresh the heartbeat (cheap; called as blocks complete)."""
        self._write()

    def release(self) -> None:
        """Remove the lock if we still own it."""
        info = self._read()
        if info is not None and info.get("token") == self.token:
            delete_key(self.store, LOCK_NAME)
