"""One writer per artifact: ``locks/<kind>/<id>.lock`` names the holder (host, pid, start, heartbeat).

A stage takes the lock of the artifact it writes before it starts and releases it at the end, so two runs of one
dataset, checkpoint or sample set never interleave their files and records: the second one waits up to ``wait``
seconds and then fails with a message naming the holder. The lock file is created exclusively (``O_EXCL`` on a local
disk; on other fsspec stores an exclusive-create open where the store offers one, else write-then-read-back of an
owner token, which closes all but a sub-second race). A holder refreshes its heartbeat every ``heartbeat_s``; a lock
whose heartbeat is older than ``stale_s`` (a killed run), or whose holder process is gone on this host, is taken
over with a warning. The holder removes the temporary files that killed writes of its artifact left
(:meth:`ArtifactLock.remove_leftovers`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from typing import Any

from storage.catalog import KINDS
from storage.ids import check_id
from storage.workspace import DiskFullError, Workspace, temporary_prefix

HEARTBEAT_S = 30.0
STALE_S = 300.0
log = logging.getLogger(__name__)


class ArtifactLockedError(RuntimeError):
    """Another run holds the artifact's lock."""


def process_gone(owner: dict[str, Any]) -> bool:
    """True when ``owner`` (``host``, ``pid``) ran on this host and its process no longer exists."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError, OverflowError):
        return False
    return False


class ArtifactLock:
    """``with ArtifactLock(ws, "checkpoint", run): ...`` (see the module docstring)."""

    def __init__(self, ws: Workspace, kind: str, artifact_id: str, wait: float = 0.0,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):  # fmt: skip
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.ws, self.kind, self.id = ws, kind, check_id(artifact_id, f"{kind} id")
        self.path = f"{ws.root}/locks/{kind}/{self.id}.lock"
        self.wait, self.heartbeat_s, self.stale_s = wait, heartbeat_s, stale_s
        self.token = uuid.uuid4().hex
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                      "since": time.time(), "heartbeat": time.time()}  # fmt: skip
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -------------------------------------------------------------------------------------------------- holder
    def holder(self) -> dict[str, Any] | None:
        try:
            with self.ws.fs.open(self.path, "rb") as handle:
                return json.loads(handle.read().decode() or "{}")
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # being written or damaged: treated as held until it goes stale

    def _describe(self, holder: dict[str, Any]) -> str:
        if not holder:
            return "an unknown run (unreadable lock file)"
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
        return f"pid {holder.get('pid')} on {holder.get('host')} (since {since})"

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:
            return False
        if not holder:  # unreadable: stale once the file itself is old
            try:
                modified = self.ws.fs.modified(self.path).timestamp()
            except (FileNotFoundError, NotImplementedError, OSError):
                return False
            return time.time() - modified > self.stale_s
        if process_gone(holder):
            return True
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_s

    def stale(self) -> bool:
        """Is the lock held by a run that is gone (see the module docstring)? False when nobody holds it."""
        holder = self.holder()
        return holder is not None and self._stale(holder)

    # ------------------------------------------------------------------------------------------------- acquire
    def _write(self, mode: str) -> None:
        self.owner["heartbeat"] = time.time()
        data = json.dumps(self.owner).encode()
        if self.ws.is_local:
            if mode == "x":
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                try:
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(data)
                except OSError as exc:  # a full disk: no half-written lock is left, and the error says where
                    os.unlink(self.path)
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise DiskFullError(f"disk full at {self.path}: free space and rerun ({exc})") from exc
                    raise
            else:
                self.ws.write_bytes(self.path, data)
            return
        if mode == "x":
            try:
                with self.ws.fs.open(self.path, "xb") as handle:
                    handle.write(data)
                return
            except (ValueError, NotImplementedError, TypeError):
                pass  # no exclusive create on this store: write, then read back who won
            if self.ws.fs.exists(self.path):
                raise FileExistsError(self.path)
        self.ws.write_bytes(self.path, data)

    def _try_acquire(self) -> bool:
        try:
            self._write("x")
        except FileExistsError:
            return False
        held = self.holder()
        return bool(held) and held.get("token") == self.token

    def acquire(self) -> ArtifactLock:
        try:
            self.ws.fs.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full at {self.path}: free space and rerun ({exc})") from exc
            raise
        deadline = time.time() + self.wait
        while True:
            if self._try_acquire():
                break
            holder = self.holder()
            if self._stale(holder):
                warnings.warn(f"taking over the stale lock of {self.kind} {self.id!r} held by "
                              f"{self._describe(holder or {})}", stacklevel=2)  # fmt: skip
                self.ws.remove(self.path)
                continue
            if time.time() >= deadline:
                raise ArtifactLockedError(
                    f"{self.kind} {self.id!r} is being written by {self._describe(holder or {})}; wait for it to "
                    f"finish or stop it (a lock without heartbeat for {self.stale_s:.0f} s is taken over; lock file: "
                    f"{self.path})"
                )
            time.sleep(min(1.0, max(0.05, deadline - time.time())))
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.id}", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = self.holder()
            if held and held.get("token") == self.token:
                try:
                    self._write("w")
                except OSError as exc:  # a full disk, a store that hiccups: this beat is missed, the next one tries
                    log.warning("lock %s: heartbeat not written (%s)", self.path, exc)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        held = self.holder()
        if held and held.get("token") == self.token:
            self.ws.remove(self.path)

    # ------------------------------------------------------------------------------------------------ clean-up
    def remove_leftovers(self, folder: str, names: list[str] | None = None) -> list[str]:
        """Remove the temporary files (``.tmp-*``) that killed writes left in ``folder``; call it holding the lock.

        Those of the files ``names`` (every one in ``folder`` when ``names`` is None: a folder of this artifact
        alone) go at any age, since holding the lock means no other run writes them; any other one only once it
        has not changed for ``stale_s`` (older names that do not say their target; a live writer of another artifact
        keeps its file changing, or holds it for moments). Returns the removed paths."""
        if self._beat is None:
            raise RuntimeError(f"remove_leftovers needs the lock of {self.kind} {self.id!r} held")
        owned = None if names is None else tuple(temporary_prefix(n) for n in names)
        removed = []
        for path, modified in self.ws.temporaries(folder):
            name = os.path.basename(path)
            old = modified is not None and time.time() - modified > self.stale_s
            if owned is None or name.startswith(owned) or old:
                try:
                    self.ws.remove(path)
                except FileNotFoundError:
                    continue
                removed.append(path)
        if removed:
            log.info("%s %s: removed %d temporary file(s) that killed runs left: %s", self.kind, self.id, len(removed),
                     ", ".join(removed))  # fmt: skip
        return removed

    def __enter__(self) -> ArtifactLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
