"""The catalog: one JSON record per artifact telling whether it is done, failed (with the error) or missing.

Records live at ``catalog/<kind>/<id>.json`` and are written atomically, one file per artifact, so concurrent workers
never rewrite each other's rows and a shared (fsspec) workspace needs no database. ``Catalog.table(kind)`` gathers
them into a pandas DataFrame for the CLI and for Prefect artifacts.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd

from storage.ids import check_id
from storage.workspace import Workspace

KINDS = ("play", "video", "tracks", "poses", "dataset", "checkpoint", "sample", "evaluation", "evaluator")
Status = Literal["done", "failed", "running"]
State = Literal["done", "failed", "running", "interrupted", "stale", "missing"]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Record:
    kind: str
    id: str
    status: Status
    key: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    updated_at: str = field(default_factory=_now)


class Catalog:
    """Reads and writes artifact records of one workspace."""

    def __init__(self, workspace: Workspace):
        self.ws = workspace

    @staticmethod
    def _check_kind(kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {', '.join(KINDS)}")
        return kind

    def _path(self, kind: str, artifact_id: str) -> str:
        return self.ws.path("catalog", self._check_kind(kind), check_id(artifact_id, f"{kind} id") + ".json")

    def put(self, record: Record) -> Record:
        record.updated_at = _now()
        self.ws.write_json(self._path(record.kind, record.id), asdict(record))
        return record

    def get(self, kind: str, artifact_id: str) -> Record | None:
        path = self._path(kind, artifact_id)
        if not self.ws.exists(path):
            return None
        return Record(**self.ws.read_json(path))

    def mark_running(self, kind: str, artifact_id: str, key: str | None = None, **meta: Any) -> Record:
        """Record a started run with its owner (host, pid), so a killed run shows as ``interrupted``."""
        previous = self.get(kind, artifact_id)
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
        merged = {**(previous.meta if previous else {}), **meta, "owner": owner}
        outputs = previous.outputs if previous else []  # earlier outputs stay listed (and on disk) while it runs
        return self.put(Record(kind=kind, id=artifact_id, status="running", key=key, outputs=outputs, meta=merged))

    def mark_done(
        self,
        kind: str,
        artifact_id: str,
        *,
        key: str | None,
        outputs: list[str],
        params: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Record:
        """Record a finished artifact; ``outputs`` are absolute workspace paths and must all exist."""
        missing = [p for p in outputs if not self.ws.exists(p)]
        if missing:
            raise FileNotFoundError(f"cannot mark {kind} {artifact_id!r} done: outputs missing: {missing}")
        previous = self.get(kind, artifact_id)
        merged = {**(previous.meta if previous else {}), **(meta or {})}
        merged.pop("owner", None)
        record = Record(
            kind=kind,
            id=artifact_id,
            status="done",
            key=key,
            params=params or {},
            outputs=[self.ws.relative(p) for p in outputs],
            meta=merged,
        )
        return self.put(record)

    def mark_failed(
        self, kind: str, artifact_id: str, error: BaseException | str, *, key: str | None = None, **meta: Any
    ) -> Record:
        """Record a failure with its error; outputs of an earlier success stay listed and on disk."""
        if isinstance(error, BaseException):
            text = f"{type(error).__name__}: {error}"
            detail = "".join(traceback.format_exception(error)[-3:])
        else:
            text, detail = error, None
        previous = self.get(kind, artifact_id)
        record = Record(
            kind=kind,
            id=artifact_id,
            status="failed",
            key=key,
            outputs=previous.outputs if previous else [],
            meta={
                k: v
                for k, v in {
                    **(previous.meta if previous else {}),
                    **meta,
                    **({"traceback": detail} if detail else {}),
                }.items()
                if k != "owner"
            },  # fmt: skip
            error=text,
        )
        return self.put(record)

    def state(self, kind: str, artifact_id: str, key: str | None = None) -> State:
        """``done`` only when the record is done, its key matches ``key`` (if given) and its outputs exist."""
        record = self.get(kind, artifact_id)
        if record is None:
            return "missing"
        if record.status == "running" and self.interrupted(record):
            return "interrupted"
        if record.status != "done":
            return record.status
        if key is not None and record.key != key:
            return "stale"
        if not all(self.ws.exists(self.ws.absolute(p)) for p in record.outputs):
            return "missing"
        return "done"

    def interrupted(self, record: Record) -> bool:
        """A ``running`` record whose run is gone: its process no longer exists on this host, or its artifact lock
        (``storage.locks``) went stale."""
        from storage.locks import ArtifactLock, process_gone  # here: storage.locks imports this module

        return process_gone(record.meta.get("owner") or {}) or ArtifactLock(self.ws, record.kind, record.id).stale()

    def is_done(self, kind: str, artifact_id: str, key: str | None = None) -> bool:
        return self.state(kind, artifact_id, key) == "done"

    def records(self, kind: str) -> list[Record]:
        folder = self.ws.path("catalog", self._check_kind(kind))
        return [Record(**self.ws.read_json(p)) for p in self.ws.glob(folder + "/*.json")]

    def table(self, kind: str) -> pd.DataFrame:
        """All records of ``kind`` as a DataFrame, ``meta`` fields spread into columns."""
        rows = []
        for record in self.records(kind):
            row = {k: v for k, v in asdict(record).items() if k not in ("meta", "params")}
            row.update({k: v for k, v in record.meta.items() if k != "traceback"})
            rows.append(row)
        columns = ["kind", "id", "status", "key", "outputs", "error", "updated_at"]
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
