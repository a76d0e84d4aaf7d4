"""Shared pieces of the flows: workspace/config loading, the GPU concurrency slot, artifact keys."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from prefect.concurrency.sync import concurrency

from pipeline.config import DatasetConfig, load_config
from storage import Workspace

GPU_LIMIT = "gpu"


def key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:120] or "artifact"


def workspace_root(workspace: str | None) -> str:
    """The workspace a flow works in: its ``workspace`` parameter, else $MAS_WORKSPACE, else ``workspace`` under the
    working directory (so deployments follow the worker's environment: /data/workspace in the image)."""
    return workspace or os.environ.get("MAS_WORKSPACE") or "workspace"


def open_inputs(workspace: str, config: str | None = None,
                overrides: list[str] | None = None) -> tuple[Workspace, DatasetConfig | None]:  # fmt: skip
    """The workspace and the dataset config with its ``key=value`` overrides (``detector.conf=0.5``)."""
    return Workspace(workspace), (load_config(config, overrides) if config else None)


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold the 'gpu' global concurrency slot (limit 1, made by ``ensure_gpu_limit``) so two flows never share a GPU.

    Without a server-side limit of that name the block runs unthrottled (strict=False).
    """
    with concurrency(GPU_LIMIT, occupy=1, strict=False):
        yield


def ensure_gpu_limit(limit: int = 1) -> None:
    """Create the 'gpu' global concurrency limit on the Prefect server if it does not exist yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=limit))
        except ObjectAlreadyExists:
            pass
