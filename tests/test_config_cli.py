from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


@pytest.mark.parametrize("name", ["nba", "horses", "gymnastics"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.fps > 0 and cfg.sources


def _write(tmp_path, data) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _good():
    return {"name": "toy", "skeleton": "coco17", "fps": 30, "sources": [{"kind": "local", "value": "videos/"}]}


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"skeleton": "smpl"}, "skeleton", "unknown skeleton 'smpl'"),
        ({"fps": -5}, "fps", "greater than 0"),
        ({"fps": float("inf")}, "fps", "finite number"),
        ({"process": {"min_motion": float("nan")}}, "process.min_motion", "finite number"),
        ({"sources": []}, "sources", "at least 1"),
        ({"sources": None}, "sources", "valid list"),
        ({"name": "../escape"}, "name", "not allowed"),
        ({"detector": {"classes": ["dragon"]}}, "detector.classes", "unknown detector class"),
        ({"detector": {"classes": ["person", "sports ball"]}}, "(top level)", "coco17_ball"),
        ({"process": {"clip_min_frames": 50, "clip_max_frames": 10}}, "process", "clip_max_frames"),
        ({"pose": {"backend": "openpose"}}, "pose.backend", "yolo_pose"),
        ({"sources": [{"kind": "local", "value": "v", "start": 5, "end": 2}]}, "sources.0", "after start"),
        ({"typo_field": 1}, "typo_field", "Extra inputs"),
    ],
)
def test_wrong_config_names_the_field(tmp_path, change, field, words):
    data = _good()
    data.update(change)
    if change.get("sources", 1) is None:
        del data["sources"]
        field, words = "sources", "Field required"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}: {field}" in message
    assert words in message


def test_unreadable_configs(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_cli_check_config_ok_and_bad(tmp_path):
    ok = runner.invoke(app, ["check-config", str(CONFIGS / "nba.yaml")])
    assert ok.exit_code == 0, ok.output
    assert '"skeleton": "nba16"' in ok.stdout
    data = _good()
    data["fps"] = 0
    bad = runner.invoke(app, ["check-config", str(_write(tmp_path, data))])
    assert bad.exit_code == 2
    assert "fps: Input should be greater than 0" in bad.output


def test_cli_has_a_command_per_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("download", "track", "pose", "poses", "process", "train", "sample", "evaluate", "demo", "status"):
        assert stage in result.output


def test_cli_rejects_bad_arguments(tmp_path):
    few_views = runner.invoke(app, ["sample", "--run", "r", "--views", "1", "-w", str(tmp_path)])
    assert few_views.exit_code == 2 and "--views" in few_views.output
    no_config = runner.invoke(app, ["track", "-c", str(tmp_path / "nope.yaml"), "-w", str(tmp_path)])
    assert no_config.exit_code == 2 and "config file not found" in no_config.output
    bad_kind = runner.invoke(app, ["status", "-w", str(tmp_path), "--kind", "frames"])
    assert bad_kind.exit_code == 2 and "not an artifact kind" in bad_kind.output
    backwards = runner.invoke(app, ["poses", str(tmp_path / "v.mp4"), "--start", "2", "--end", "1"])
    assert backwards.exit_code == 2 and "must be after --start" in backwards.output


def test_cli_status_lists_catalog(tmp_path):
    from storage import Catalog, Workspace

    catalog = Catalog(Workspace(tmp_path))
    catalog.mark_failed("video", "clip1", "zero frames in video")
    result = runner.invoke(app, ["status", "-w", str(tmp_path)])
    assert result.exit_code == 0
    assert "clip1" in result.stdout and "failed" in result.stdout and "zero frames" in result.stdout


def test_read_only_status_never_creates_a_workspace(tmp_path):
    typo = tmp_path / "worksapce"
    result = runner.invoke(app, ["status", "-w", str(typo)])
    assert result.exit_code == 2 and "no workspace at" in result.output and "--workspace" in result.output
    assert not typo.exists()


def test_logs_off_a_terminal_stay_readable(synthetic_ws):
    """Piped output (a file, a Prefect worker): progress bars update every few seconds, not at every step."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    mas = str(Path(sys.executable).with_name("mas"))
    start = time.monotonic()
    done = subprocess.run([mas, "train", "--dataset", "synth", "--run", "quiet-logs", "-w", str(synthetic_ws.root),
                           "--steps", "40", "--layers", "1", "--latent-dim", "16", "--device", "cpu",
                           "--save-every", "40"], capture_output=True, text=True, timeout=300)  # fmt: skip
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    updates = [part for part in done.stderr.replace("\r", "\n").splitlines() if "train quiet-logs" in part]
    # the start, one line every 15 s, the end and its final refresh (tqdm's default: one line a step here, ~40)
    assert 1 <= len(updates) <= 3 + seconds / 15, (seconds, updates)


def test_mediapipe_start_up_lines_stay_out_of_logs():
    import subprocess
    import sys

    script = ("import numpy as np\nfrom pipeline.pose import MediaPipeBackend\nb = MediaPipeBackend()\n"
              "b.estimate(np.zeros((96, 96, 3), np.uint8), np.array([[4.0, 4.0, 90.0, 90.0]]))\n"
              "print('ok')\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
    assert "TensorFlow Lite" not in done.stderr and "W0000" not in done.stderr and "absl" not in done.stderr


def test_config_overrides_on_the_command_line(tmp_path):
    path = _write(tmp_path, _good())
    cfg = load_config(path, ["detector.conf=0.5", "fps=25", "process.mirror=false", "detector.classes=[person]"])
    assert (cfg.detector.conf, cfg.fps, cfg.process.mirror) == (0.5, 25.0, False)
    ok = runner.invoke(app, ["check-config", str(path), "detector.conf=0.5"])
    assert ok.exit_code == 0 and '"conf": 0.5' in ok.stdout, ok.output
    for override, words in [
        ("detector.cnf=0.5", "unknown config key 'detector.cnf'; keys of detector: weights, classes"),
        ("nope=1", "keys of the top level: name, skeleton, fps"),
        ("fps.x=1", "fps has no sub-keys"),
        ("detector.conf", "expected key=value"),
        ("detector.conf=2", "with detector.conf=2: detector.conf: Input should be less than 1"),
    ]:
        bad = runner.invoke(app, ["check-config", str(path), override])
        assert bad.exit_code == 2 and words in bad.output, (override, bad.output)
    track = runner.invoke(app, ["track", "-c", str(path), "-w", str(tmp_path / "ws"), "detector.iou=7"])
    assert track.exit_code == 2 and "detector.iou: Input should be less than 1" in track.output


def test_version_choices_and_flow_arguments(tmp_path):
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("mas-pipeline ")
    help_text = runner.invoke(app, ["sample", "--help"], env={"COLUMNS": "200"}).output
    assert "mas|sds" in help_text and "auto|fp32|int8|bf16" in help_text and "auto|cpu|cuda|cuda:N" in help_text
    device = runner.invoke(app, ["train", "--dataset", "d", "-w", str(tmp_path), "--device", "gpu"])
    assert device.exit_code == 2 and "'gpu' is not a device" in device.output
    method = runner.invoke(app, ["sample", "--run", "r", "-w", str(tmp_path), "--method", "dreamfusion"])
    assert method.exit_code == 2 and "dreamfusion" in method.output
    flows = runner.invoke(app, ["flow", "--help"], env={"COLUMNS": "200"}).output
    for name in ("build-dataset", "download", "track", "pose", "process", "train", "sample", "evaluate", "end-to-end"):
        assert name in flows
    path = str(_write(tmp_path, _good()))
    cases = [
        (["flow", "train"], "flow train needs dataset=..."),
        (["flow", "train", "dataset=x", "stpes=1"], "no parameter 'stpes'; its parameters: dataset, run, steps"),
        (["flow", "train", "dataset=x", "steps=abc"], "steps: Input should be a valid integer"),
        (["flow", "process", "-c", path, "--video", "v"], "does not take --video; flows that do: build-dataset, track"),
        (["flow", "track"], "flow track needs --config"),
        (["flow", "track", "-c", path, "detector.cnf=1"], "unknown config key 'detector.cnf'"),
    ]
    for args, words in cases:
        result = runner.invoke(app, [*args, "-w", str(tmp_path / "ws")])
        assert result.exit_code == 2 and words in result.output, (args, result.output)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_cli_check_config_refuses_infinite_and_nan_fps(tmp_path, value):
    text = yaml.safe_dump(_good()).replace("fps: 30", f"fps: {value}")
    assert f"fps: {value}" in text
    result = runner.invoke(app, ["check-config", str(_write(tmp_path, text))])
    assert result.exit_code == 2 and "fps" in result.output
    assert "finite number" in result.output or "greater than 0" in result.output
