"""Shared pieces of the flows: workspace/config loading, the GPU concurrency slot, artifact keys."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator

from prefect import get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError

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


# The slot is held through a lease the holder renews every 3/4 of it: a run killed outright (SIGKILL, out of
# memory) cannot release it, and the server frees it when the lease runs out (its repossessor looks every 15 s).
# Prefect's default lease of 300 s kept the next run waiting about 5 minutes; 60 s is the shortest the server takes.
GPU_LEASE_SECONDS = 60
GPU_WAIT_NOTE_SECONDS = 30.0  # a run waiting for the slot says so this often


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _slot_usage() -> str:
    """'1 of 1 taken' for the GPU limit, as the server tells it (or why it cannot be read)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        return f"{limit.active_slots} of {limit.limit} taken"
    except Exception as exc:  # noqa: BLE001 - only a note in a log line
        return f"usage unknown: {type(exc).__name__}"


@contextlib.contextmanager
def gpu_slot(note_every: float = GPU_WAIT_NOTE_SECONDS) -> Iterator[None]:
    """Hold the 'gpu' global concurrency slot (limit 1, made by ``ensure_gpu_limit``) so two flows never share a GPU.

    While the slot is taken the run logs every ``note_every`` seconds what it waits for; a slot whose holder crashed
    is freed by the server within :data:`GPU_LEASE_SECONDS` (+15 s). Without a server-side limit of that name the
    block runs unthrottled (strict=False).
    """
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(concurrency(GPU_LIMIT, occupy=1, strict=False, timeout_seconds=note_every,
                                                lease_duration=GPU_LEASE_SECONDS))  # fmt: skip
                break
            except TimeoutError:
                _logger().warning(
                    "waiting for the %r concurrency slot for %.0f s (%s): another run holds the GPU; a run that "
                    "crashed holding it frees it within %d s (`prefect global-concurrency-limit inspect %s`)",
                    GPU_LIMIT, time.monotonic() - start, _slot_usage(), GPU_LEASE_SECONDS + 15, GPU_LIMIT,
                )  # fmt: skip
        waited = time.monotonic() - start
        if waited > note_every:
            _logger().info("got the %r concurrency slot after %.0f s", GPU_LIMIT, waited)
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
