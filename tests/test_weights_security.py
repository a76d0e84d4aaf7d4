"""Nothing in a model file runs: crafted files through the real `mas` CLI, each with a marker command that must not
run (issue 31 item 1). Each attack is first shown to be real: loaded the way Ultralytics or torch loads it without
our reader, the same file runs its marker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.assets import PERSON_DETECTOR_CLASSES
from pipeline.config import DetectorConfig, Source
from pipeline.detect_track import track_video
from pipeline.download import ingest_file
from storage import Workspace
from tests.test_download import make_video

MAS = str(Path(sys.executable).with_name("mas"))
ROOT = Path(__file__).resolve().parents[1]


class _RunsCode:
    """Pickles as a call of os.system."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsDetectionModel:
    """Pickles as a call of Ultralytics' DetectionModel with a config whose activation string Ultralytics evaluates
    (an allow-listed class called, not rebuilt: the attack that ran inside the old safety check)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel, yaml_model_load

        cfg = yaml_model_load("yolov8n.yaml")
        cfg["activation"] = f"__import__('os').system('touch {self.marker}') or nn.SiLU()"
        return (DetectionModel, (cfg,))


def _evil_yaml(path: Path, marker: Path) -> Path:
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8n.yaml")
    cfg.pop("yaml_file", None)
    cfg["activation"] = f"__import__('os').system('touch {marker}') or nn.SiLU()"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def _workspace(root: Path, detector: Path | None = None) -> tuple[Workspace, Path]:
    """A workspace with one short video (tracked by the real offline detector when given) and a config file."""
    ws = Workspace(root / "ws")
    video = ingest_file(ws, make_video(root / "clip.mp4", frames=8), Source(kind="local", value="clip"), "clip")
    if detector is not None:
        det = DetectorConfig(weights=str(detector), class_names=PERSON_DETECTOR_CLASSES, imgsz=160, runtime="torch")
        assert track_video(ws, video.video_id, det, progress=False).status == "done"
    config = root / "cfg.yaml"
    config.write_text((ROOT / "configs" / "custom_skeleton.yaml").read_text())
    return ws, config


@pytest.fixture(scope="module")
def ingested_ws(tmp_path_factory):
    return _workspace(tmp_path_factory.mktemp("security"))


def _mas(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "400"}
    return subprocess.run([MAS, *args], capture_output=True, text=True, timeout=300, env=env)


def _detector_args(ws, config, weights) -> list[str]:
    return ["track", "-c", str(config), "-w", str(ws.root), "--force", f"detector.weights={weights}",
            "detector.class_names={Normal: person, Fall: person}", "detector.runtime=torch", "detector.imgsz=160"]


CRAFTED = {  # name: (file name, how it is made, the refusal the user reads)
    "os.system pickle as .pt": ("w.pt", "system", r"asks for (posix|os|nt)\.system"),
    "os.system pickle as .PT (upper case)": ("w.PT", "system", r"asks for (posix|os|nt)\.system"),
    "os.system pickle as .pth": ("w.pth", "system", r"asks for (posix|os|nt)\.system"),
    "os.system pickle without suffix": ("weights", "system", r"unrecognised file type"),
    "a call of DetectionModel with an evaluated activation": ("call.pt", "call", r"holds no module state"),
    "an Ultralytics model YAML": ("model.yaml", "yaml", r"a model YAML describes an architecture"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_detector_weights_run_nothing_through_the_cli(tmp_path, ingested_ws, case):
    ws, config = ingested_ws
    name, kind, refusal = CRAFTED[case]
    marker, crafted = tmp_path / "marker", tmp_path / name
    if kind == "yaml":
        _evil_yaml(crafted, marker)
    else:
        torch.save({"model": (_RunsCode if kind == "system" else _CallsDetectionModel)(str(marker)), "date": "x"},
                   crafted)  # fmt: skip
    done = _mas(*_detector_args(ws, config, crafted))
    assert not marker.exists(), f"{case}: the marker ran\n{done.stdout}\n{done.stderr}"
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    assert __import__("re").search(refusal, done.stdout + done.stderr), done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["call", "yaml"])
def test_the_attacks_are_real_when_ultralytics_loads_the_file(tmp_path, kind):
    """The control: Ultralytics' own loading of the same files runs the marker (so the test above can fail)."""
    marker = tmp_path / "marker"
    crafted = tmp_path / ("call.pt" if kind == "call" else "model.yaml")
    if kind == "yaml":
        _evil_yaml(crafted, marker)
    else:
        torch.save({"model": _CallsDetectionModel(str(marker))}, crafted)
    script = f"from ultralytics import YOLO\ntry:\n    YOLO({str(crafted)!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert marker.exists()


def test_crafted_pose_weights_and_checkpoints_are_refused_through_the_cli(tmp_path, person_detector):
    ws, config = _workspace(tmp_path, person_detector)
    marker = tmp_path / "marker"
    # yolo_pose with an upper-case suffix
    crafted = tmp_path / "pose.PT"
    torch.save({"model": _RunsCode(str(marker))}, crafted)
    done = _mas("pose", "-c", str(config), "-w", str(ws.root), "--force", "pose.backend=yolo_pose",
                f"pose.weights={crafted}")  # fmt: skip
    assert done.returncode != 0 and "asks for" in done.stdout + done.stderr and "Traceback" not in done.stderr
    # a ViTPose folder with a pickled pytorch_model.bin beside a valid config
    from transformers import VitPoseBackboneConfig, VitPoseConfig

    folder = tmp_path / "vitpose"
    folder.mkdir()
    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    small = VitPoseConfig(backbone_config=backbone)
    (folder / "config.json").write_text(json.dumps(small.to_dict()))
    torch.save({"w": _RunsCode(str(marker))}, folder / "pytorch_model.bin")
    done = _mas("pose", "-c", str(config), "-w", str(ws.root), "--force", "pose.backend=vitpose",
                f"pose.weights={folder}")  # fmt: skip
    assert done.returncode != 0 and "asks for" in done.stdout + done.stderr, done.stdout + done.stderr
    # a crafted training checkpoint where `mas sample` reads one
    run_dir = Path(ws.checkpoint_dir("crafted"))
    run_dir.mkdir(parents=True)
    torch.save({"format": 1, "model": _RunsCode(str(marker))}, run_dir / "last.pt")
    done = _mas("sample", "--run", "crafted", "-w", str(ws.root))
    assert done.returncode != 0 and "not a readable checkpoint" in done.stdout + done.stderr
    # a config with a YAML python tag
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\nsources: !!python/object/apply:os.system ['touch {marker}']\n")
    done = _mas("check-config", str(bad))
    assert done.returncode != 0
    assert not marker.exists()


def test_real_weights_load_into_networks_we_build(tmp_path, person_detector):
    """The shipped YOLOv8 detector and a pose model saved by Ultralytics give the same outputs through our reader as
    through Ultralytics' own (trusting) loading; an ``.PT`` name is read the same."""
    from ultralytics import YOLO

    from pipeline.detect_track import load_yolo
    from pipeline.vitpose_weights import load_vitpose

    x = torch.rand(1, 3, 160, 160)
    for path, what, task in ((person_detector, "detector", "detect"), (tmp_path / "pose.PT", "pose", "pose")):
        if task == "pose":
            YOLO("yolo11n-pose.yaml").save(str(path))
        ours = load_yolo(str(path), what, task)
        theirs = YOLO(str(path)).model.float().eval()
        with torch.no_grad():
            torch.testing.assert_close(ours.model(x)[0], theirs(x)[0])
        assert ours.names == theirs.names
    assert load_yolo(str(person_detector)).names == {0: "Normal", 1: "Fall"}
    # a ViTPose folder in safetensors, as the Hub ships them
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    small = VitPoseConfig(backbone_config=backbone)
    reference = VitPoseForPoseEstimation(small).eval()
    reference.save_pretrained(tmp_path / "vitpose")
    from transformers import VitPoseImageProcessor

    VitPoseImageProcessor().save_pretrained(tmp_path / "vitpose")
    model, _ = load_vitpose(str(tmp_path / "vitpose"))
    pixels = torch.rand(1, 3, 256, 192)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).heatmaps, reference(pixels).heatmaps)
