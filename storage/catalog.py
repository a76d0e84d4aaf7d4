"""The catalog: one JSON record per artifact telling whether it is done, failed (with the error) or missing.

Records live at ``catalog/<kind>/<id>.json`` and are written atomically, one file per artifact, so concurrent workers
never rewrite each other's rows and a shared (fsspec) workspace needs no database. ``Catalog.table(kind)`` gathers
them into a pandas DataFrame for the CLI and for Prefect artifacts.

A lookup is one file read: by id (``get``), or by an indexed field of a done record's meta (``find``; the video's
``sha256``) through ``catalog/by-<field>/<kind>/<value>.json``, so importing a video never lists the catalog. A done
record keeps the size of each output file, and "done" is only believed while the files still have those sizes (and
Parquet files their footer): a truncated or replaced output is ``damaged`` and its stage computes it again. A record
that is not valid JSON is reported by name and treated as absent (a stage rewriting it first moves it aside to
``<id>.json.corrupt``), so one trashed file never blocks the other artifacts. On a remote store, listing a kind reads
only the record files that changed since ``catalog/snapshots/<kind>.json`` (:meth:`Catalog.records`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import traceback
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from storage.ids import check_id
from storage.workspace import Workspace

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("play", "video", "tracks", "poses", "dataset", "checkpoint", "sample", "evaluation", "evaluator")
INDEXED = {"video": ("sha256",)}  # meta fields of done records that ``find`` looks up in O(1)
Status = Literal["done", "failed", "running"]
State = Literal["done", "failed", "running", "interrupted", "stale", "missing", "damaged"]
log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class CorruptRecordError(ValueError):
    """A catalog record file that is not a valid record (trashed JSON, wrong fields)."""


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
    sizes: dict[str, int] = field(default_factory=dict)  # output file (relative path) -> bytes when marked done


SNAPSHOT_FORMAT = 1


def _version(info: dict[str, Any]) -> list[str] | None:
    """What tells a remote file's content from its earlier ones, from a listing entry: size, ETag (S3, GCS, Azure)
    and modification time; None when the store gives neither an ETag nor a time (no snapshot is trusted then)."""
    tag = next((info[k] for k in ("ETag", "etag", "md5Hash", "generation") if info.get(k) is not None), None)
    when = next((info[k] for k in ("LastModified", "last_modified", "mtime", "updated") if info.get(k) is not None),
                None)  # fmt: skip
    if tag is None and when is None:
        return None
    return [str(info.get("size")), str(tag), str(when)]


def _parse(path: str, data: bytes) -> Record:
    """A record from the bytes of its file; :class:`CorruptRecordError` names the file and the fix."""
    try:
        value = json.loads(data.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        return Record(**value)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptRecordError(
            f"{path}: the catalog record is unreadable ({type(exc).__name__}: {exc}); it is treated as absent, so "
            "its stage computes the artifact again and rewrites it (the broken file is kept as .corrupt); delete "
            "the file to silence this message"
        ) from None


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

    def _index_path(self, kind: str, name: str, value: str) -> str:
        return self.ws.path("catalog", f"by-{name}", kind, check_id(str(value), f"{kind} {name}") + ".json")

    def put(self, record: Record) -> Record:
        record.updated_at = _now()
        self.ws.write_json(self._path(record.kind, record.id), asdict(record))
        return record

    def _read(self, path: str) -> Record | None:
        """The record at ``path``; None when there is none. Raises :class:`CorruptRecordError`."""
        try:
            with self.ws.fs.open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return _parse(path, data)

    def get(self, kind: str, artifact_id: str) -> Record | None:
        """The record of ``kind``/``artifact_id``, or None; an unreadable record is reported (a warning naming the
        file) and counts as absent."""
        try:
            return self._read(self._path(kind, artifact_id))
        except CorruptRecordError as exc:
            log.warning("%s", exc)
            return None

    def _previous(self, kind: str, artifact_id: str) -> Record | None:
        """The record a write replaces; an unreadable one is moved aside to ``<id>.json.corrupt`` (and reported)."""
        path = self._path(kind, artifact_id)
        try:
            return self._read(path)
        except CorruptRecordError as exc:
            aside = path + ".corrupt"
            try:
                self.ws.fs.mv(path, aside)
                log.warning("%s; moved aside to %s", exc, aside)
            except OSError as move_error:
                log.warning("%s (could not move it aside: %s)", exc, move_error)
            return None

    def mark_running(self, kind: str, artifact_id: str, key: str | None = None, **meta: Any) -> Record:
        """Record a started run with its owner (host, pid), so a killed run shows as ``interrupted``."""
        previous = self._previous(kind, artifact_id)
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
        """Record a finished artifact; ``outputs`` are absolute workspace paths and must all exist. The size of each
        output file is kept so that a later truncation is noticed (:meth:`output_problem`)."""
        sizes, missing = {}, []
        for path in outputs:
            try:
                info = self.ws.fs.info(path)
            except FileNotFoundError:
                missing.append(path)
                continue
            if info.get("type") == "file":
                sizes[self.ws.relative(path)] = int(info["size"])
        if missing:
            raise FileNotFoundError(f"cannot mark {kind} {artifact_id!r} done: outputs missing: {missing}")
        previous = self._previous(kind, artifact_id)
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
            sizes=sizes,
        )
        self.put(record)
        for name in INDEXED.get(kind, ()):
            if not self.ws.exists(self._index_marker(kind, name)):
                self._build_index(kind, name)  # a new workspace: nothing to scan; an old one: indexed once
            elif merged.get(name) is not None:
                self.ws.write_json(self._index_path(kind, name, merged[name]), {"id": artifact_id})
        return record

    def mark_failed(
        self, kind: str, artifact_id: str, error: BaseException | str, *, key: str | None = None, **meta: Any
    ) -> Record:
        """Record a failure with its error; outputs of an earlier success stay listed and on disk.

        Never raises for want of space: when the record cannot be written (a full disk), the ``running`` record is
        removed instead, so the artifact shows as missing rather than running forever, and a warning says so."""
        if isinstance(error, BaseException):
            text = f"{type(error).__name__}: {error}"
            detail = "".join(traceback.format_exception(error)[-3:])
        else:
            text, detail = error, None
        previous = self._previous(kind, artifact_id)
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
        try:
            return self.put(record)
        except OSError as exc:
            path = self._path(kind, artifact_id)
            try:
                self.ws.remove(path)
                outcome = "its 'running' record was removed"
            except OSError:
                outcome = "its record could not be removed either"
            log.warning("could not record the failure of %s %r in %s (%s); %s. The failure: %s", kind, artifact_id,
                        path, exc, outcome, text)  # fmt: skip
            return record

    def output_problem(self, record: Record) -> str | None:
        """Why the outputs of a done ``record`` cannot be trusted (a file missing, or of another size than when it was
        written; for a record from before sizes were kept, a Parquet file without its footer), or None. One metadata
        call per output."""
        for relative in record.outputs:
            path = self.ws.absolute(relative)
            try:
                info = self.ws.fs.info(path)
            except FileNotFoundError:
                return f"{path} is missing"
            if info.get("type") != "file":
                continue
            size, expected = int(info["size"]), record.sizes.get(relative)
            if expected is not None and size != expected:
                return f"{path} has {size} bytes but had {expected} when it was written (truncated or replaced)"
            if expected is None and path.endswith(".parquet") and not self._parquet_intact(path, size):
                return f"{path} is not a whole Parquet file (no footer: truncated)"
        return None

    def _parquet_intact(self, path: str, size: int) -> bool:
        if size < 12:
            return False
        with self.ws.fs.open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(size - 4)
            tail = handle.read(4)
        return head == b"PAR1" and tail == b"PAR1"

    def state(self, kind: str, artifact_id: str, key: str | None = None) -> State:
        """``done`` only when the record is done, its key matches ``key`` (if given) and its outputs are whole
        (:meth:`output_problem`; otherwise ``missing`` or ``damaged``)."""
        record = self.get(kind, artifact_id)
        if record is None:
            return "missing"
        if record.status == "running" and self.interrupted(record):
            return "interrupted"
        if record.status != "done":
            return record.status
        if key is not None and record.key != key:
            return "stale"
        problem = self.output_problem(record)
        if problem is not None:
            return "missing" if problem.endswith(" is missing") else "damaged"
        return "done"

    def interrupted(self, record: Record) -> bool:
        """A ``running`` record whose run is gone: its process no longer exists on this host, or its artifact lock
        (``storage.locks``) went stale."""
        from storage.locks import ArtifactLock, process_gone  # here: storage.locks imports this module

        return process_gone(record.meta.get("owner") or {}) or ArtifactLock(self.ws, record.kind, record.id).stale()

    def unfinished(self, record: Record) -> tuple[str, str]:
        """The state of a record that is not done and why, in words that follow "the tracks of video X": for a
        ``running`` record, ``interrupted`` (its run is gone, on this host or, by its lock's heartbeat, on any other)
        or ``running`` (who runs it); for a ``failed`` one, its error."""
        owner = record.meta.get("owner") or {}
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
        if record.status == "running":
            if self.interrupted(record):
                return "interrupted", f"were interrupted (the run of {who} is gone)"
            return "running", f"are still being computed ({who})"
        if record.status == "failed":
            return "failed", f"failed ({record.error})"
        return record.status, f"are {record.status}"

    def is_done(self, kind: str, artifact_id: str, key: str | None = None) -> bool:
        """Is the artifact done and whole? A damaged one is reported (a warning naming the file): its stage, which
        asks this before skipping work, computes it again."""
        state = self.state(kind, artifact_id, key)
        if state == "damaged":
            record = self.get(kind, artifact_id)
            problem = self.output_problem(record) if record else "its record vanished"
            log.warning("%s %r is recorded done but %s; it is computed again", kind, artifact_id, problem)
        return state == "done"

    def find(self, kind: str, name: str, value: str) -> Record | None:
        """The done record of ``kind`` whose ``meta[name]`` is ``value`` (a field of :data:`INDEXED`), or None: one
        index file read and one record read, never a listing (a workspace made before the index is indexed once)."""
        if name not in INDEXED.get(kind, ()):
            raise ValueError(f"{kind} records are not indexed by {name!r}; indexed: {INDEXED.get(kind, ())}")
        if not self.ws.exists(self._index_marker(kind, name)):
            self._build_index(kind, name)
        try:
            pointer = json.loads(self.ws.read_bytes(self._index_path(kind, name, value)))
            record = self.get(kind, str(pointer["id"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if record is None or record.status != "done" or record.meta.get(name) != value:
            return None  # the entry outlived its record (rewritten, failed since): not a match
        return record

    def _index_marker(self, kind: str, name: str) -> str:
        return self.ws.path("catalog", f"by-{name}", kind, "complete")

    def _build_index(self, kind: str, name: str) -> None:
        """Index every done record of ``kind`` by ``name`` (one listing), then mark the index complete."""
        for record in self.records(kind):
            if record.status == "done" and record.meta.get(name) is not None:
                self.ws.write_json(self._index_path(kind, name, record.meta[name]), {"id": record.id})
        self.ws.write_text(self._index_marker(kind, name), _now() + "\n")

    def _record_paths(self, kind: str) -> list[str]:
        """Every record file of ``kind`` (one directory listing)."""
        folder = self.ws.path("catalog", self._check_kind(kind))
        if self.ws.is_local:
            try:
                with os.scandir(folder) as entries:
                    return sorted(f"{folder}/{e.name}" for e in entries if e.name.endswith(".json"))
            except FileNotFoundError:
                return []
        return sorted(self._remote_listing(folder))

    def _remote_listing(self, folder: str) -> dict[str, list[str] | None]:
        """Record files in ``folder`` of a remote store, each with its version (:func:`_version`): one listing (on
        S3 one request per 1000 files), fresh from the store rather than from fsspec's listing cache."""
        self.ws.fs.invalidate_cache(folder)
        try:
            entries = self.ws.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"]: _version(e) for e in entries if e.get("type") == "file" and e["name"].endswith(".json")}

    def _snapshot_path(self, kind: str) -> str:
        return self.ws.path("catalog", "snapshots", kind + ".json")

    def _read_snapshot(self, kind: str) -> dict[str, dict[str, Any]]:
        """The last snapshot of ``kind``'s records (file name -> version and record); empty when absent or unreadable
        (it is only a cache: rebuilt from the record files)."""
        try:
            value = json.loads(self.ws.read_bytes(self._snapshot_path(kind)))
            entries = value["records"] if value.get("format") == SNAPSHOT_FORMAT else {}
            return {name: e for name, e in entries.items() if isinstance(e, dict) and "version" in e and "record" in e}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def records(self, kind: str, problems: list[str] | None = None) -> list[Record]:
        """All readable records of ``kind``. An unreadable one is left out and reported: appended to ``problems``
        when given, else logged as a warning naming the file.

        On a remote store (S3) a record file is read only when the listing shows it new or changed since the last
        snapshot (``catalog/snapshots/<kind>.json``: each record with the size, ETag and modification time its file
        had when it was read), so a listing plus one read stands for thousands of GETs; the snapshot is rewritten
        when something changed, and a store that gives no ETag or modification time is read file by file."""
        if self.ws.is_local:
            paths = self._record_paths(kind)
            contents: dict[str, Any] = {}
            for path in paths:
                try:
                    with open(path, "rb") as handle:
                        contents[path] = handle.read()
                except FileNotFoundError:  # removed since the listing
                    continue
            return self._parse_all(paths, contents, {}, problems)[0]
        listing = self._remote_listing(self.ws.path("catalog", self._check_kind(kind)))
        paths = sorted(listing)
        snapshot = self._read_snapshot(kind) if any(v is not None for v in listing.values()) else {}
        known: dict[str, Record] = {}
        for path in paths:
            entry = snapshot.get(path.rsplit("/", 1)[-1])
            if entry is not None and listing[path] is not None and entry["version"] == listing[path]:
                try:
                    known[path] = Record(**entry["record"])
                except TypeError:  # a snapshot entry of another shape: read the file
                    pass
        unread = [p for p in paths if p not in known]
        contents = self.ws.fs.cat(unread, on_error="return") if unread else {}  # concurrent GETs
        out, parsed = self._parse_all(paths, contents, known, problems)
        fresh = {}
        for path, record in parsed.items():
            if listing[path] is not None:
                name = path.rsplit("/", 1)[-1]
                fresh[name] = snapshot[name] if path in known else {"version": listing[path], "record": asdict(record)}
        if fresh.keys() != snapshot.keys() or any(p not in known for p in parsed):  # something changed: rewrite
            try:
                self.ws.write_text(self._snapshot_path(kind),
                                   json.dumps({"format": SNAPSHOT_FORMAT, "records": fresh}, default=str))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - a read-only store or any failure leaves a cache unwritten
                log.debug("could not write the catalog snapshot of %s: %s", kind, exc)
        return out

    def _parse_all(self, paths: list[str], contents: dict[str, Any], known: dict[str, Record],
                   problems: list[str] | None) -> tuple[list[Record], dict[str, Record]]:  # fmt: skip
        """Records of ``paths`` in order: from ``known``, else parsed from ``contents`` (bytes or the read's error);
        also the parsed ones by path. Unreadable ones are reported as :meth:`records` says."""
        out, parsed = [], {}
        for path in paths:
            if path in known:
                out.append(known[path])
                parsed[path] = known[path]
                continue
            data = contents.get(path)
            if data is None:  # a store that names the paths another way in its answer: read the file itself
                try:
                    data = self.ws.read_bytes(path)
                except FileNotFoundError:
                    continue
            if isinstance(data, FileNotFoundError):  # removed since the listing
                continue
            try:
                if isinstance(data, BaseException):
                    raise CorruptRecordError(f"{path}: the catalog record cannot be read ({data})")
                parsed[path] = _parse(path, data)
                out.append(parsed[path])
            except CorruptRecordError as exc:
                if problems is None:
                    log.warning("%s", exc)
                else:
                    problems.append(str(exc))
        return out, parsed

    def table(self, kind: str) -> pd.DataFrame:
        """All records of ``kind`` as a DataFrame, ``meta`` fields spread into columns."""
        import pandas as pd

        rows = []
        for record in self.records(kind):
            row = {k: v for k, v in asdict(record).items() if k not in ("meta", "params", "sizes")}
            row.update({k: v for k, v in record.meta.items() if k != "traceback"})
            rows.append(row)
        columns = ["kind", "id", "status", "key", "outputs", "error", "updated_at"]
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
