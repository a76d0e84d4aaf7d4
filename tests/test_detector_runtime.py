"""The detector's exported runtime (OpenVINO / ONNX Runtime) and strided detection, on the real person detector and
the real Sports2D clip: the export gives the PyTorch model's boxes, is made once, follows the thread count, and a
strided run keeps the tracks with interpolated boxes."""

import numpy as np
import pandas as pd
import pytest

from pipeline.assets import PERSON_DETECTOR_CLASSES
from pipeline.config import DetectorConfig
from pipeline.detect_track import bridge_strided, load_detector, load_yolo, run_tracker, strided_frame
from pipeline.detector_runtime import RuntimeUnavailable, detector_names, exported_weights, resolve_runtime
from pipeline.track_cleanup import box_overlap
from pipeline.video import iter_frames
from storage.tables import TRACK_COLUMNS

FRAMES = 24


def detector_config(person_detector, **kwargs) -> DetectorConfig:
    return DetectorConfig(weights=str(person_detector), class_names=PERSON_DETECTOR_CLASSES, batch=8, **kwargs)


@pytest.fixture(scope="module")
def short_clip(demo_clip, tmp_path_factory):
    """The first FRAMES frames of the Sports2D clip as their own file (the tracker reads whole files)."""
    import cv2

    path = tmp_path_factory.mktemp("clip") / "short.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (1768, 994))
    for _, frame in iter_frames(demo_clip, 0, FRAMES):
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def torch_tracks(short_clip, person_detector):
    cfg = detector_config(person_detector, runtime="torch")
    model, runtime, _ = load_detector(cfg)
    assert runtime == "torch"
    return run_tracker(model, short_clip, cfg, "clip", progress=False)[0]


def matched_overlaps(a: pd.DataFrame, b: pd.DataFrame) -> list[float]:
    """For every box of ``a``, its best overlap with a box of ``b`` in the same frame (0 when ``b`` has none)."""
    out = []
    for frame, group in a.groupby("frame"):
        other = b[b["frame"] == frame][["x1", "y1", "x2", "y2"]].to_numpy()
        for box in group[["x1", "y1", "x2", "y2"]].to_numpy():
            iou = box_overlap(np.repeat(box[None], len(other), 0), other)[0] if len(other) else [0.0]
            out.append(float(np.max(iou)))
    return out


def test_auto_runtime_is_openvino_on_cpu_and_a_missing_package_is_named(monkeypatch):
    assert resolve_runtime("auto", cuda=False)[0] == "openvino"
    assert resolve_runtime("auto", cuda=True)[0] == "torch"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    with pytest.raises(RuntimeUnavailable, match="needs the onnxruntime package"):
        resolve_runtime("onnx", cuda=False)
    with pytest.raises(ValueError, match="unknown detector runtime"):
        resolve_runtime("tensorrt", cuda=False)


@pytest.mark.parametrize("runtime", ["openvino", "onnx"])
def test_an_export_tracks_like_pytorch_once_made(runtime, short_clip, person_detector, torch_tracks, tmp_path,
                                                 monkeypatch):  # fmt: skip
    monkeypatch.setenv("MAS_CACHE", str(tmp_path / "cache"))
    built = load_yolo(str(person_detector))  # the network we build from the file's tensors is what is exported
    first = exported_weights(built, runtime, 640)
    made = first.stat().st_mtime_ns
    assert exported_weights(built, runtime, 640) == first and first.stat().st_mtime_ns == made
    assert not [p for p in (tmp_path / "cache" / "exports").iterdir() if p.name.startswith(".")]  # no leftovers

    import torch

    cfg = detector_config(person_detector, runtime=runtime)
    model, resolved, _ = load_detector(cfg)
    assert resolved == runtime and str(first) in str(model.model_name)
    # the cached export is loaded without the .pt file, and its class names come from its metadata, without the
    # throwaway predictor (one more model compile) that Ultralytics builds to read them
    assert detector_names(model) == load_yolo(str(person_detector)).names and model.predictor is None
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = run_tracker(model, short_clip, cfg, "clip", progress=False)[0]
    finally:
        torch.set_num_threads(before)
    backend = model.predictor.model.backend
    threads = (backend.ov_compiled_model.get_property("INFERENCE_NUM_THREADS") if runtime == "openvino"
               else backend.session.get_session_options().intra_op_num_threads)  # fmt: skip
    assert threads == 1  # the runtime follows the process's thread count
    assert table["track_id"].nunique() == torch_tracks["track_id"].nunique()
    overlaps = matched_overlaps(torch_tracks, table)
    assert len(table) == len(torch_tracks) and min(overlaps) > 0.98, overlaps  # the same boxes, fp32 rounding aside
    if runtime == "onnx":  # an exported file given as detector.weights is refused: give the .pt, we export it
        from models.weights_file import UnsafeWeightsError

        with pytest.raises(UnsafeWeightsError, match="exported models are not taken as weights"):
            load_detector(detector_config(first))


def test_a_failed_export_under_auto_tracks_with_pytorch_and_says_why(person_detector, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("MAS_CACHE", str(blocker))  # the cache cannot be created: a real failure of the export
    model, runtime, why = load_detector(detector_config(person_detector))
    assert runtime == "torch" and "exporting" in why and "detector.runtime: torch" in why
    with pytest.raises(RuntimeUnavailable, match="exporting .* to openvino failed"):
        load_detector(detector_config(person_detector, runtime="openvino"))


def test_strided_frames_are_the_ones_ultralytics_keeps(short_clip):
    """Pins ``strided_frame``: the vid_stride loader's images equal our decoder's frames k-1, 2k-1, ..."""
    from ultralytics.data.loaders import LoadImagesAndVideos

    ours = [frame[..., ::-1] for _, frame in iter_frames(short_clip)]  # BGR, as Ultralytics reads
    for stride in (2, 3):
        kept = [images[0] for _, images, _ in LoadImagesAndVideos(short_clip, vid_stride=stride)]
        assert len(kept) == FRAMES // stride
        for index, image in enumerate(kept):
            assert np.array_equal(image, ours[strided_frame(index, stride)]), (stride, index)


def test_bridging_interpolates_short_gaps_only():
    rows = [("v", f, 1, "person", 0.9, 10.0 * f, 0, 10.0 * f + 50, 100) for f in (1, 3, 5, 11)]
    rows += [("v", 3, -1, "sports ball", 0.5, 0, 0, 5, 5), ("v", 5, -1, "sports ball", 0.5, 4, 0, 9, 5)]
    table = pd.DataFrame(rows, columns=TRACK_COLUMNS)
    hists = np.arange(len(table), dtype=np.float32)[:, None].repeat(4, 1)
    out, out_hists = bridge_strided(table, hists, 2, frames=12)
    person = out[out["track_id"] == 1].set_index("frame")
    # frame 0 (never looked at) takes frame 1's box; 5..11 is a missed detection, left to the stitching; frame 11
    # is the last one looked at (12 frames), so the box holds on to frame 11 only (no frame 12)
    assert list(person.index) == [0, 1, 2, 3, 4, 5, 11]
    assert person.loc[2, "x1"] == 20 and person.loc[4, "x2"] == 90  # midpoints
    assert person.loc[0, "x1"] == person.loc[1, "x1"] == 10
    longer = bridge_strided(table, hists, 2, frames=13)[0]  # frame 12 was never looked at: the box holds
    assert list(longer[longer["track_id"] == 1]["frame"]) == [0, 1, 2, 3, 4, 5, 11, 12]
    assert (out[out["track_id"] == -1]["frame"] == [3, 5]).all()  # balls stay where they were detected
    assert out_hists[out.index[(out["track_id"] == 1) & (out["frame"] == 4)][0], 0] == 1  # frame 3's histogram
    assert bridge_strided(table, hists, 1)[0] is table


def test_strided_tracking_keeps_the_people_on_every_frame(short_clip, person_detector, torch_tracks):
    cfg = detector_config(person_detector, runtime="torch", stride=2)
    model, _, _ = load_detector(cfg)
    table = run_tracker(model, short_clip, cfg, "clip", progress=False)[0]
    assert table["track_id"].nunique() == torch_tracks["track_id"].nunique()
    overlaps = matched_overlaps(torch_tracks, table)
    # measured: median 0.82, min 0.76. The tracker's Kalman boxes lag more when it sees every other frame of the
    # jumper's fast arm swing; interpolated and held frames are included
    assert len(table) == len(torch_tracks)  # every frame has its boxes, the first one (never looked at) included
    assert np.median(overlaps) > 0.78 and min(overlaps) > 0.7, overlaps
