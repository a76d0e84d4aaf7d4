import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run through the device tool)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_ws(tmp_path_factory):
    """A workspace with a small synthetic 2D dataset ('synth') built from procedural 3D motions."""
    from pipeline.synthetic import build_synthetic_dataset
    from storage import Workspace

    ws = Workspace(tmp_path_factory.mktemp("synthetic-ws"))
    build_synthetic_dataset(ws, "synth", num_motions=64, length=32, seed=0)
    return ws
