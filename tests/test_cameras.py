import math

import numpy as np
import pytest
import torch

from pipeline.cameras import (
    DEFAULT_SUBJECT_HEIGHT_M,
    OFFICIAL_DISTANCE_IN_HEIGHTS,
    metres_to_units,
    normalize_2d,
    pose_height,
    project,
    project_each,
    rotation_matrix,
    to_camera,
    view_azimuths,
    view_rotations,
)
from pipeline.skeletons import get_skeleton


def test_rotations_are_orthonormal_and_batched():
    rot = rotation_matrix(np.linspace(-3, 3, 7)[:, None], np.array([0.0, 0.3]))
    assert rot.shape == (7, 2, 3, 3)
    eye = np.broadcast_to(np.eye(3), rot.shape)
    np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)


def test_view_azimuths_match_mas():
    np.testing.assert_allclose(view_azimuths(4), [-math.pi, -math.pi / 2, 0, math.pi / 2])
    np.testing.assert_allclose(view_azimuths(2), [-math.pi, -math.pi / 3])  # Table 3: two views 120 degrees apart
    with pytest.raises(ValueError):
        view_azimuths(0)


def test_known_projections():
    point = np.array([[[1.0, 2.0, 0.5]]])  # [L=1, J=1, 3]
    front = rotation_matrix([0.0], 0.0)
    np.testing.assert_allclose(project(point, front, mode="orthographic")[0, 0, 0], [1.0, 2.0])
    np.testing.assert_allclose(project(point, front, distance=7.0)[0, 0, 0], np.array([1.0, 2.0]) * 7 / 7.5)
    side = rotation_matrix([math.pi / 2], 0.0)  # orbit a quarter turn: world z becomes camera -x (official sign)
    np.testing.assert_allclose(project(point, side, mode="orthographic")[0, 0, 0], [-0.5, 2.0], atol=1e-12)
    down = rotation_matrix([0.0], math.pi / 2)  # look straight down from above
    cam = to_camera(np.array([[[0.0, 1.0, 0.0]]]), down)[0, 0, 0]
    np.testing.assert_allclose(cam, [0.0, 0.0, -1.0], atol=1e-12)  # the top of the head comes towards the camera


def _official_rotation(azimuth: float, elevation: float) -> np.ndarray:
    """The official code's matrix (utils/math_utils.py), applied to row vectors: ``motion @ R_y(az) @ R_x(el)``."""
    c, s = math.cos(azimuth), math.sin(azimuth)
    r_y = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    c, s = math.cos(elevation), math.sin(elevation)
    r_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return r_y @ r_x


def test_views_match_the_official_code_numerically():
    rng = np.random.default_rng(3)
    motion = rng.normal(size=(6, 5, 3))
    for azimuth, elevation in [(0.0, math.pi / 16), (-math.pi, math.pi / 16), (1.1, -0.3), (2.5, 0.7)]:
        official = motion @ _official_rotation(azimuth, elevation)  # rotated motion, as the official code projects it
        ours = to_camera(motion, rotation_matrix([azimuth], elevation))[0]
        np.testing.assert_allclose(ours, official, atol=1e-12)
        np.testing.assert_allclose(project(motion, rotation_matrix([azimuth], elevation), mode="orthographic")[0],
                                   official[..., :2], atol=1e-12)  # fmt: skip
        # official perspective: xy / (z + d), drawn at d / 0.75 scale (sample/mas.py) -- ours is d * xy / (z + d)
        np.testing.assert_allclose(project(motion, rotation_matrix([azimuth], elevation), distance=7.0)[0],
                                   7.0 * official[..., :2] / (official[..., 2:] + 7.0), atol=1e-12)  # fmt: skip


def test_positive_elevation_looks_down_like_a_broadcast_camera():
    # a point on the floor one unit further from the camera (world +z at azimuth 0) appears higher in the image
    floor = np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    xy = project(floor, rotation_matrix([0.0], math.pi / 16), distance=7.0)[0, 0]
    assert xy[1, 1] - xy[0, 1] == pytest.approx(7 * math.sin(math.pi / 16) / (7 + math.cos(math.pi / 16)), abs=1e-12)
    assert xy[1, 1] - xy[0, 1] == pytest.approx(0.171, abs=5e-4)
    # and the camera sees the top of a standing subject's head from above: the head is nearer than the feet
    cam = to_camera(np.array([[[0.0, 0.0, 0.0], [0.0, 1.8, 0.0]]]), rotation_matrix([0.0], math.pi / 16))[0, 0]
    assert cam[1, 2] < cam[0, 2]


def test_perspective_approaches_orthographic_with_distance():
    rng = np.random.default_rng(0)
    motion = rng.uniform(-1, 1, size=(5, 8, 3))
    rot = view_rotations(5)
    ortho = project(motion, rot, mode="orthographic")
    errors = [np.abs(project(motion, rot, distance=d) - ortho).max() for d in (3, 7, 30, 300)]
    assert errors == sorted(errors, reverse=True)
    for d, err in zip((3, 7, 30, 300), errors, strict=True):
        assert err <= math.sqrt(3) * math.sqrt(2) / (d - math.sqrt(3)) + 1e-12  # seed Theorem 2 bound, radius sqrt(3)


def test_torch_and_numpy_agree_and_batch():
    rng = np.random.default_rng(1)
    motion = rng.normal(size=(2, 6, 4, 3)) * 0.3
    rot = view_rotations(3)
    out_np = project(motion, rot)
    out_t = project(torch.tensor(motion, dtype=torch.float64), rot)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (2, 3, 6, 4, 2)
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-12)
    assert project(torch.zeros(6, 4, 3), rot).dtype == torch.float32


def test_projection_errors():
    with pytest.raises(ValueError, match="projection mode"):
        project(np.zeros((1, 1, 3)), view_rotations(2), mode="fisheye")
    with pytest.raises(ValueError, match="behind the camera"):
        project(np.array([[[0.0, 0.0, -10.0]]]), rotation_matrix([0.0], 0.0), distance=7)
    with pytest.raises(ValueError, match="positive camera distance"):
        project(np.zeros((1, 1, 3)), view_rotations(2), distance=0)


def test_normalize_2d_centres_scales_and_flips():
    skeleton = get_skeleton("coco17")
    rng = np.random.default_rng(2)
    base = rng.normal(size=(30, 17, 2))
    pixels = base * 80 + np.array([640.0, 360.0])
    conf = np.ones((30, 17))
    norm, centre, scale = normalize_2d(pixels, conf, skeleton.root)
    root = norm[:, list(skeleton.root)].mean(axis=(0, 1))
    np.testing.assert_allclose(root, 0.0, atol=1e-5)
    # invariant to where the person stands and how large they appear in pixels; y flipped up
    norm2, _, scale2 = normalize_2d(pixels * 3 + 100, conf, skeleton.root)
    np.testing.assert_allclose(norm2, norm, atol=1e-5)
    assert scale2 == pytest.approx(3 * scale)
    flipped, _, _ = normalize_2d(pixels, conf, skeleton.root, y_down=False)
    np.testing.assert_allclose(flipped[..., 1], -norm[..., 1], atol=1e-5)


def test_normalize_2d_ignores_low_confidence_joints():
    skeleton = get_skeleton("coco17")
    rng = np.random.default_rng(3)
    pixels = rng.normal(size=(20, 17, 2)) * 50 + 300
    conf = np.ones((20, 17))
    reference, _, _ = normalize_2d(pixels, conf, skeleton.root, conf_threshold=0.5)
    corrupted = pixels.copy()
    corrupted[:, 0] = 0.0  # a (0, 0) keypoint that the detector missed
    conf[:, 0] = 0.05
    norm, _, _ = normalize_2d(corrupted, conf, skeleton.root, conf_threshold=0.5)
    np.testing.assert_allclose(norm[:, 1:], reference[:, 1:], atol=1e-4, rtol=0.2)
    with pytest.raises(ValueError, match="no frame has two or more confident joints"):
        normalize_2d(pixels, np.zeros((20, 17)), skeleton.root, conf_threshold=0.5)
    with pytest.raises(ValueError, match=r"\[L, J, 2\]"):
        normalize_2d(pixels[0], None, skeleton.root)


def test_projected_3d_and_2d_data_share_the_normalisation():
    """A 3D motion projected by the camera code and the same motion drawn in pixels normalise to the same thing."""
    rng = np.random.default_rng(4)
    motion = rng.normal(size=(10, 17, 3)) * 0.3
    projected = project(motion, rotation_matrix([0.4], 0.2), mode="orthographic")[0]
    pixels = projected * np.array([200.0, -200.0]) + np.array([500.0, 400.0])  # y down, pixels
    a, _, _ = normalize_2d(projected, None, (11, 12), y_down=False)
    b, _, _ = normalize_2d(pixels, None, (11, 12), y_down=True)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_project_each_equals_projecting_each_motion_alone():
    rng = np.random.default_rng(3)
    points = rng.normal(0, 0.5, (4, 6, 5, 3))
    rotations = rotation_matrix(rng.uniform(-np.pi, np.pi, (4, 2)), 0.3)  # [S, V, 3, 3]: views of their own
    for mode, distance in (("perspective", 7.0), ("orthographic", None)):
        loop = np.stack([project(points[s], rotations[s], distance, mode) for s in range(4)])
        np.testing.assert_allclose(project_each(points, rotations, distance, mode), loop, atol=1e-12)
        batched = project_each(torch.as_tensor(points), torch.as_tensor(rotations), distance, mode)
        np.testing.assert_allclose(batched.numpy(), loop, atol=1e-9)
    with pytest.raises(ValueError, match="behind the camera"):
        project_each(points * 100, rotations, 7.0)


NBA_MEAN = np.array([[0.0, 0.0], [0.0059, -0.0538], [0.0320, -0.8467], [0.0387, -1.6221], [-0.0059, -0.0538],
                     [-0.0320, -0.8467], [-0.0387, -1.6221], [0.0, 1.2095], [0.0, 1.3734], [0.0, 1.6786],
                     [-0.0219, 1.0224], [-0.0154, 0.4987], [-0.0144, 0.1952], [0.0219, 1.0224], [0.0154, 0.4987],
                     [0.0144, 0.1952]])  # fmt: skip  # the official data_loaders/nba/Mean.npy (4 decimals)


def test_distance_in_metres_reproduces_the_official_nba_geometry():
    assert pose_height(NBA_MEAN) == pytest.approx(3.3007, abs=1e-4)
    assert OFFICIAL_DISTANCE_IN_HEIGHTS == pytest.approx(2.828, abs=1e-3)
    official_m = OFFICIAL_DISTANCE_IN_HEIGHTS * DEFAULT_SUBJECT_HEIGHT_M  # 5.09 m for a 1.8 m subject
    units = metres_to_units(official_m, NBA_MEAN)
    assert units == pytest.approx(7 / 0.75, rel=1e-4)
    # the official projection (sample/mas.py): 3D in units 0.75x the 2D ones, xy / (z + 7), drawn at 7 / 0.75
    rng = np.random.default_rng(4)
    motion_2d_units = rng.normal(size=(5, 16, 3))
    rot = rotation_matrix([0.7], math.pi / 16)
    cam = to_camera(motion_2d_units * 0.75, rot)[0]
    official = cam[..., :2] / (cam[..., 2:] + 7.0) * 7.0 / 0.75
    np.testing.assert_allclose(project(motion_2d_units, rot, distance=units)[0], official, rtol=2e-4, atol=1e-6)
    # a 1.8 m subject 2 m away is 1.11 mean-pose heights away; the conversion refuses nonsense
    assert metres_to_units(2.0, NBA_MEAN) == pytest.approx(2.0 / 1.8 * 3.3007, rel=1e-4)
    with pytest.raises(ValueError, match="must be positive"):
        metres_to_units(-1.0, NBA_MEAN)
    with pytest.raises(ValueError, match="no height"):
        metres_to_units(5.0, np.zeros((16, 2)))


def test_points_behind_the_camera_get_an_error_naming_the_fix():
    motion = np.zeros((2, 3, 3))
    motion[1, 0, 2] = -3.0  # one joint walks 3 units towards the camera at azimuth 0
    with pytest.raises(ValueError, match="reaches 3 units towards a camera 2 units away.*root_centring: frame"):
        project(motion, rotation_matrix([0.0], 0.0), distance=2.0)
