"""Validation of ids and names that become parts of storage paths.

Every id that reaches a path (video id, dataset name, run name, ...) goes through :func:`check_id`, so no id can
climb out of the workspace (``..``, ``/``, ``\\``) or hide as a dot file.
"""

from __future__ import annotations

import re

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnsafeIdError(ValueError):
    """An id or name that cannot be used as a storage path component."""


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a safe single path component, else raise :class:`UnsafeIdError` naming ``what``."""
    if not isinstance(value, str):
        raise UnsafeIdError(f"{what} must be a string, got {type(value).__name__}")
    if not _ID_PATTERN.fullmatch(value) or ".." in value:
        raise UnsafeIdError(
            f"{what} {value!r} is not allowed: use 1-128 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, without '..' or path separators"
        )
    return value


def slugify(text: str, max_len: int = 64) -> str:
    """Turn free text (a video title, a file stem) into a safe id component."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    slug = re.sub(r"\.{2,}", ".", slug)[:max_len].strip("-._")
    return slug or "item"
