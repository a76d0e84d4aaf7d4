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
