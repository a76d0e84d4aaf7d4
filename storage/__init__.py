"""Storage: workspace layout, atomic writes, content hashing and the artifact catalog."""

from storage.catalog import Catalog, Record
from storage.hashing import file_sha256, params_hash, stage_key
from storage.ids import UnsafeIdError, check_id, slugify
from storage.workspace import Workspace

__all__ = [
    "Catalog",
    "Record",
    "UnsafeIdError",
    "Workspace",
    "check_id",
    "file_sha256",
    "params_hash",
    "slugify",
    "stage_key",
]
