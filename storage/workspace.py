"""The workspace: where every artifact lives, and the only code that knows its layout.

The root is a local directory (the default) or any fsspec URL (``s3://bucket/mas``, ``memory://x``) so that workers on
several machines can share one workspace. Every write is atomic: data goes to a temporary name in the destination
folder and is renamed into place, so a killed run never leaves a half-written artifact under its final name. The
temporary name names its target (``.tmp-<name>.<random>``), so the next run of the stage that writes it removes what
a killed run left there (``ArtifactLock.remove_leftovers``).

Layout under the root::

    videos/<video_id>/video.<ext>          original video
    tracks/<video_id>.parquet              detections + track ids
    poses/<video_id>.parquet               2D keypoints per track
    overlays/<video_id>.mp4                boxes, ids and skeletons drawn for checking by eye
    datasets/<name>/...                    clips, index, normalisation stats, dataset card
    checkpoints/<run>/...                  model checkpoints and training metrics
    samples/<name>/...                     3D motions, BVH, videos
    evaluations/<name>/...                 metric tables and plots
    evaluators/<key>/...                   trained motion evaluators (key: hash of data + configuration), loss curves
    catalog/<kind>/<id>.json               one record per artifact: done / failed (with error) / running
    catalog/snapshots/<kind>.json          on a remote store: the records as last read, a cache for listing them
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.ids import check_id

AREAS = (
    "videos",
    "tracks",
    "poses",
    "overlays",
    "datasets",
    "checkpoints",
    "samples",
    "evaluations",
    "evaluators",
    "catalog",
)


LOW_SPACE_BYTES = 1 << 20  # a write that fails with less than this free on its filesystem failed for want of space


class DiskFullError(OSError):
    """A write failed because the filesystem (or the process's file size limit) had no room; the message names the
    file and the fix."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def _no_room(exc: BaseException, directory: str, tmp: str) -> str | None:
    """Why a write of ``tmp`` in ``directory`` that raised ``exc`` ran out of room, or None if it did not. Libraries
    do not all say so (torch: "unexpected pos 173568 vs 173460"), so the filesystem is asked too, before the partial
    file is removed: almost no free space left, or the file has reached the process's file size limit."""
    code = getattr(exc, "errno", None)
    try:
        stat = os.statvfs(directory)
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < LOW_SPACE_BYTES):
        return f"disk full ({free if free is not None else 'unknown'} bytes free)"
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = os.path.getsize(tmp)
    except (ImportError, OSError, ValueError):
        return None
    if code == errno.EFBIG or (limit != resource.RLIM_INFINITY and size >= limit):
        return f"file size limit reached ({size} bytes written; `ulimit -f` is {limit} bytes)"
    return None


TMP_PREFIX = ".tmp-"  # the temporary files of atomic writes: ``.tmp-<target name>.<random><suffix>``


def temporary_prefix(name: str) -> str:
    """How the temporary files of an atomic write of the file ``name`` begin (see :meth:`Workspace.atomic_path`)."""
    return f"{TMP_PREFIX}{name}."


class Workspace:
    """A rooted tree of artifacts on a local disk or an fsspec filesystem."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True):
        """``create=False`` (read-only commands): a missing root is an error, never silently created."""
        self.url = str(root)
        self.fs, root_path = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = str(Path(root_path).resolve()) if self.is_local else root_path.rstrip("/")
        if create:
            self.fs.makedirs(self.root, exist_ok=True)
        elif not self.fs.isdir(self.root):
            raise FileNotFoundError(f"no workspace at {self.url}; check --workspace (stages create it when they run)")

    def __repr__(self) -> str:
        return f"Workspace({self.url!r})"

    # ----------------------------------------------------------------------------------------------------- layout
    def path(self, area: str, *parts: str) -> str:
        """Path of ``area/parts...`` under the root; every part is checked so no id can escape the workspace."""
        if area not in AREAS:
            raise ValueError(f"unknown workspace area {area!r}; expected one of {', '.join(AREAS)}")
        checked = [check_id(part, f"{area} path component") for part in parts]
        return "/".join([self.root, area, *checked])

    def video_dir(self, video_id: str) -> str:
        return self.path("videos", check_id(video_id, "video id"))

    def tracks_path(self, video_id: str) -> str:
        return self.path("tracks", check_id(video_id, "video id") + ".parquet")

    def poses_path(self, video_id: str) -> str:
        return self.path("poses", check_id(video_id, "video id") + ".parquet")

    def overlay_path(self, video_id: str) -> str:
        return self.path("overlays", check_id(video_id, "video id") + ".mp4")

    def dataset_dir(self, name: str) -> str:
        return self.path("datasets", check_id(name, "dataset name"))

    def checkpoint_dir(self, run: str) -> str:
        return self.path("checkpoints", check_id(run, "run name"))

    def samples_dir(self, name: str) -> str:
        return self.path("samples", check_id(name, "sample set name"))

    def evaluation_dir(self, name: str) -> str:
        return self.path("evaluations", check_id(name, "evaluation name"))

    def evaluator_dir(self, key: str) -> str:
        """Folder of a trained motion evaluator, named by the content hash of its data and configuration."""
        return self.path("evaluators", check_id(key, "evaluator key"))

    def relative(self, path: str) -> str:
        """``path`` relative to the root (how the catalog stores output paths)."""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path!r} is not inside the workspace {self.root!r}")
        return path[len(prefix) :]

    def absolute(self, relative_path: str) -> str:
        parts = relative_path.split("/")
        return self.path(parts[0], *parts[1:])

    # ------------------------------------------------------------------------------------------------------ reads
    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as handle:
            return handle.read()

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8")

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_text(path))

    def glob(self, pattern_path: str) -> list[str]:
        return sorted(self.fs.glob(pattern_path))

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        """A local file path holding the content of ``path`` (the file itself when the workspace is local)."""
        if self.is_local:
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="mas-read-") as tmp:
            local = os.path.join(tmp, os.path.basename(path))
            self.fs.get(path, local)
            yield local

    # ----------------------------------------------------------------------------------------------------- writes
    @contextlib.contextmanager
    def atomic_path(self, path: str) -> Iterator[str]:
        """Yield a local temporary file name; when the block ends without error it becomes ``path`` atomically.

        Use it for libraries that want a file name (pyarrow, numpy, torch, OpenCV). On error the temporary file is
        removed and whatever was at ``path`` before is left untouched; a write that failed for want of space raises
        :class:`DiskFullError` naming ``path`` and the fix, whatever the library said.
        """
        suffix = "".join(Path(path).suffixes[-2:])
        prefix = temporary_prefix(os.path.basename(path))  # names its target: a killed write's file is found by name
        if self.is_local:
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            # not mkstemp: its files are 0600 whatever the umask, and a workspace is shared (a compose volume); this
            # one gets 0666 less the umask, as any file the process creates
            tmp = os.path.join(directory, f"{prefix}{uuid.uuid4().hex}{suffix}")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            try:
                yield tmp
                os.replace(tmp, path)
            except Exception as exc:
                reason = _no_room(exc, directory, tmp)
                if reason is None:
                    raise
                raise DiskFullError(f"{reason} at {path}: free space and rerun ({type(exc).__name__}: {exc})") from exc
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        with tempfile.TemporaryDirectory(prefix="mas-write-") as tmp_dir:
            tmp = os.path.join(tmp_dir, "payload" + suffix)
            yield tmp
            remote_tmp = f"{os.path.dirname(path)}/{prefix}{uuid.uuid4().hex}{suffix}"
            self.fs.makedirs(os.path.dirname(path), exist_ok=True)
            self.fs.put_file(tmp, remote_tmp)
            try:
                self.fs.mv(remote_tmp, path)
            finally:
                if self.fs.exists(remote_tmp):
                    self.fs.rm(remote_tmp)

    def write_bytes(self, path: str, data: bytes) -> str:
        with self.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
        return path

    def write_text(self, path: str, text: str) -> str:
        return self.write_bytes(path, text.encode("utf-8"))

    def write_json(self, path: str, value: Any) -> str:
        return self.write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")

    def copy_in(self, local_file: str | os.PathLike[str], path: str) -> str:
        """Copy a local file into the workspace atomically."""
        with self.atomic_path(path) as tmp:
            shutil.copyfile(local_file, tmp)
        return path

    def temporaries(self, folder: str) -> list[tuple[str, float | None]]:
        """The temporary files of atomic writes (``.tmp-*``) directly in ``folder``, each with its modification time
        (seconds since the epoch; None where the store does not say): what killed writes leave behind."""
        found: list[tuple[str, float | None]] = []
        if self.is_local:
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                            try:
                                found.append((f"{folder}/{entry.name}", entry.stat(follow_symlinks=False).st_mtime))
                            except FileNotFoundError:  # renamed or removed since the listing
                                continue
            except FileNotFoundError:
                return []
            return found
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        for name in names:
            if os.path.basename(name.rstrip("/")).startswith(TMP_PREFIX):
                try:
                    found.append((name, self.fs.modified(name).timestamp()))
                except (FileNotFoundError, NotImplementedError, OSError, AttributeError):
                    found.append((name, None))
        return found

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
