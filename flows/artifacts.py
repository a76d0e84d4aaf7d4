"""Prefect artifacts: tables and Markdown that show each stage's results in the UI.

Markdown artifacts carry their pictures inline (``data:`` URIs): the UI renders an artifact outside the workspace, so
relative image links would be broken there. Numbers are shown with 4 significant digits.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from storage import Catalog, Workspace

IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.(?:png|jpg|jpeg))\)", re.IGNORECASE)
MAX_IMAGE_WIDTH = 1100


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (0.1234567 -> 0.1235, 12345.6 -> 12350.0)."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, float):
        return significant(value)
    if isinstance(value, (list, dict)):
        return str(value)
    return value


def data_uri(image: bytes, suffix: str = "png") -> str:
    """An image as a ``data:`` URI, scaled down to MAX_IMAGE_WIDTH pixels wide (keeps artifacts small)."""
    import cv2
    import numpy as np

    decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if decoded is not None and decoded.shape[1] > MAX_IMAGE_WIDTH:
        scale = MAX_IMAGE_WIDTH / decoded.shape[1]
        decoded = cv2.resize(decoded, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        image, suffix = cv2.imencode(".png", decoded)[1].tobytes(), "png"
    mime = "jpeg" if suffix.lower() in ("jpg", "jpeg") else "png"
    return f"data:image/{mime};base64,{base64.b64encode(image).decode()}"


def inline_images(text: str, read: Callable[[str], bytes]) -> str:
    """Replace relative image links ``![alt](path.png)`` with ``data:`` URIs, reading each with ``read(path)``; an
    image that cannot be read becomes a note naming it."""

    def swap(match: re.Match) -> str:
        alt, path = match.group(1), match.group(2)
        if path.startswith(("http://", "https://", "data:")):
            return match.group(0)
        try:
            return f"![{alt}]({data_uri(read(path), path.rsplit('.', 1)[-1])})"
        except OSError as exc:
            return f"*(picture `{path}` could not be read: {exc})*"

    return IMAGE_LINK.sub(swap, text)


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
