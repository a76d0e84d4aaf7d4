"""Task runners: threads by default, a Dask cluster (prefect-dask) to spread per-video tasks over machines."""

from __future__ import annotations


def dask_runner(address: str | None = None, workers: int = 2):
    """A ``DaskTaskRunner`` on an existing scheduler (``tcp://host:8786``) or on a new local cluster."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
