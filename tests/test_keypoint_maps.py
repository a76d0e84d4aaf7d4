"""nba16 from COCO-17 and Halpe-26 (documented formulas), user skeletons' derive maps, and their use in the pose
backends."""

import numpy as np
import pytest

from pipeline.keypoint_maps import keypoint_map
from pipeline.skeletons import COCO17, HALPE26, NBA16, Skeleton, SkeletonError


def coco_person(rng=None) -> np.ndarray:
    """One standing COCO-17 person ``[17, 3]`` in pixels (y down), confidences 0.5-1.0."""
    points = {
        "nose": (100, 40), "left_eye": (104, 36), "right_eye": (96, 36), "left_ear": (110, 40), "right_ear": (90, 40),
        "left_shoulder": (120, 70), "right_shoulder": (80, 70), "left_elbow": (126, 100), "right_elbow": (74, 100),
        "left_wrist": (128, 128), "right_wrist": (72, 128), "left_hip": (112, 140), "right_hip": (88, 140),
        "left_knee": (114, 185), "right_knee": (86, 185), "left_ankle": (115, 230), "right_ankle": (85, 230),
    }  # fmt: skip
    out = np.zeros((17, 3), np.float32)
    for name, xy in points.items():
        out[COCO17.joints.index(name), :2] = xy
    out[:, 2] = np.linspace(0.5, 1.0, 17) if rng is None else rng.uniform(0.3, 1.0, 17)
    return out


def at(kp: np.ndarray, skeleton: Skeleton, joint: str) -> np.ndarray:
    return kp[..., skeleton.index(joint), :]


def test_nba16_from_coco17_follows_the_documented_formulas():
    person = coco_person()
    out = keypoint_map(COCO17, NBA16).apply(person[None])[0]
    assert out.shape == (16, 3)
    c = lambda j: at(person, COCO17, j)  # noqa: E731
    hip = (c("left_hip") + c("right_hip")) / 2
    neck = (c("left_shoulder") + c("right_shoulder")) / 2
    ears = (c("left_ear") + c("right_ear")) / 2
    np.testing.assert_allclose(at(out, NBA16, "Hip")[:2], hip[:2])
    np.testing.assert_allclose(at(out, NBA16, "Neck")[:2], neck[:2])
    np.testing.assert_allclose(at(out, NBA16, "Head")[:2], ears[:2] + 0.5 * (ears[:2] - neck[:2]))
    assert at(out, NBA16, "Head")[1] < at(out, NBA16, "Nose")[1] < at(out, NBA16, "Neck")[1]  # top of the head
    # confidence of a derived joint: the minimum of its sources
    assert at(out, NBA16, "Hip")[2] == min(c("left_hip")[2], c("right_hip")[2])
    assert at(out, NBA16, "Head")[2] == min(c(j)[2] for j in ("left_ear", "right_ear", "left_shoulder",
                                                               "right_shoulder"))  # fmt: skip
    for joint, source in (("LWrist", "left_wrist"), ("RAnkle", "right_ankle"), ("Nose", "nose")):
        np.testing.assert_array_equal(at(out, NBA16, joint), c(source))


def test_missing_sources_fall_back_or_stay_missing():
    person = np.stack([coco_person()] * 3)
    person[1, COCO17.index("left_ear"), 2] = 0.0  # an ear unseen: Head from the eyes
    person[2, [COCO17.index(j) for j in ("left_ear", "left_eye")], 2] = 0.0  # ear and eye unseen: no Head
    person[2, COCO17.index("right_hip"), :2] = np.nan  # a NaN hip: no Hip
    out = keypoint_map(COCO17, NBA16).apply(person)
    c = lambda j: at(person[1], COCO17, j)  # noqa: E731
    eyes, neck = (c("left_eye") + c("right_eye")) / 2, (c("left_shoulder") + c("right_shoulder")) / 2
    np.testing.assert_allclose(at(out[1], NBA16, "Head")[:2], 1.5 * eyes[:2] - 0.5 * neck[:2])
    for joint in ("Head", "Hip"):
        assert at(out[2], NBA16, joint)[2] == 0 and np.isnan(at(out[2], NBA16, joint)[:2]).all()
    assert at(out[2], NBA16, "Neck")[2] > 0


def test_derived_joints_move_with_the_body():
    """Affine formulas: rotating, scaling and shifting the image moves the derived joints the same way."""
    rng = np.random.default_rng(0)
    person = coco_person(rng)
    angle, scale, shift = 0.4, 1.7, np.array([30.0, -12.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = person.copy()
    moved[:, :2] = person[:, :2] @ rot.T * scale + shift
    mapping = keypoint_map(COCO17, NBA16)
    a, b = mapping.apply(person[None])[0], mapping.apply(moved[None])[0]
    np.testing.assert_allclose(b[:, :2], a[:, :2] @ rot.T * scale + shift, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(a[:, 2], b[:, 2])


def test_nba16_from_halpe26_takes_its_own_head_neck_hip():
    rng = np.random.default_rng(1)
    halpe = rng.uniform(0, 200, (2, 26, 3)).astype(np.float32)
    halpe[..., 2] = rng.uniform(0.2, 1.0, (2, 26))
    out = keypoint_map(HALPE26, NBA16).apply(halpe)
    for joint, source in (("Head", "head"), ("Neck", "neck"), ("Hip", "hip"), ("LKnee", "left_knee")):
        np.testing.assert_array_equal(at(out, NBA16, joint), at(halpe, HALPE26, source))


def test_bad_maps_fail_naming_the_joint():
    def user(derive, joints=("pelvis", "nose")):
        return Skeleton("u", joints, ((0, 1),), (), (0,), keypoints_from="coco17", derive=derive)

    assert keypoint_map(COCO17, user((("pelvis", ((("left_hip", 0.5), ("right_hip", 0.5)),)),))).formulas
    with pytest.raises(SkeletonError, match="'pelvis'.*sum to 1.4"):
        keypoint_map(COCO17, user((("pelvis", ((("left_hip", 0.7), ("right_hip", 0.7)),)),)))
    with pytest.raises(SkeletonError, match="'pelvis'.*uses \\['hips'\\]"):
        keypoint_map(COCO17, user((("pelvis", ((("hips", 1.0),),)),)))
    with pytest.raises(SkeletonError, match="joint 'pelvis' is not a coco17 keypoint"):
        keypoint_map(COCO17, user(()))
    with pytest.raises(SkeletonError, match="joint 'Hip' is not a coco17 keypoint.*keypoints_from"):
        keypoint_map(COCO17, Skeleton("v", ("Hip",), (), (), (0,)))
    with pytest.raises(SkeletonError, match="made from coco17 keypoints.*gives apt36k17"):
        keypoint_map("apt36k17", user(()))


def test_vitpose_backend_gives_nba16_through_the_map():
    """The pose stage's backend for an nba16 dataset: ViTPose+ (COCO-17 expert, a config-built model) mapped."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    from pipeline.pose import MappedBackend, VitPoseBackend, body_backend

    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     num_experts=6, part_features=8, out_indices=[1])  # fmt: skip
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17))
    raw = VitPoseBackend(model=model, processor=VitPoseImageProcessor(), dataset_index=0, device="cpu")
    backend = body_backend(raw, NBA16)
    assert isinstance(backend, MappedBackend) and backend.skeleton == NBA16
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 100, 200], [150, 20, 300, 230]], np.float32)
    coco, nba = raw.estimate(image, boxes), backend.estimate(image, boxes)
    assert nba.shape == (2, 16, 3)
    np.testing.assert_allclose(nba, keypoint_map(COCO17, NBA16).apply(coco))
    assert body_backend(raw, "coco17_ball") is raw  # COCO-17 body + ball: no map needed
