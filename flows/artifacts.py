"""Prefect artifacts: tables and Markdown that show each stage's results in the UI."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from storage import Catalog, Workspace


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (list, dict)):
        return str(value)
    return value


def table(key: str, rows: list[dict[str, Any]] | pd.DataFrame, description: str) -> None:
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    create_table_artifact(key=key, table=[{k: _clean(v) for k, v in r.items()} for r in records],
                          description=description)  # fmt: skip


def markdown(key: str, text: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=text, description=description)


def catalog_table(ws: Workspace, kind: str, key: str) -> None:
    """The catalog's records of one kind (done / failed with error) as a table artifact."""
    frame = Catalog(ws).table(kind)
    keep = [
        c for c in ("id", "status", "error", "source", "frames", "fps", "tracks", "rows", "updated_at") if c in frame
    ]
    table(key, frame[keep] if len(frame) else [{"id": "-", "status": "nothing recorded"}], f"{kind} records")
