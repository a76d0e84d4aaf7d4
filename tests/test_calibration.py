"""The Qualisys calibration parser (pinned to numbers worked out by hand from Pose2Sim's demo file) and the weighted
DLT triangulation used by the 2D pose benchmark."""

import numpy as np
import pytest

from pipeline.calibration import CalibrationError, read_qca
from pipeline.multiview import project, reprojection_error, triangulate


@pytest.fixture(scope="module")
def cameras():
    from pipeline.assets import pose2sim_calibration

    return read_qca(pose2sim_calibration())


def test_qca_parsed_as_pose2sim_does(cameras):
    assert [c.name for c in cameras] == ["cam01", "cam02", "cam03", "cam04"]
    cam = cameras[0]
    assert cam.size == (1088.0, 1920.0)  # fov_video right 1087 - left 0 + 1, bottom 1919 - top 0 + 1
    # intrinsics in 1/64 pixel: focalLengthU 107599.671875 / 64, centerPointU 34110.316406 / 64, ...
    np.testing.assert_allclose(cam.K, [[1681.244873046875, 0, 532.97369384375],
                                       [0, 1681.075439453125, 948.137390140625], [0, 0, 1]])  # fmt: skip
    np.testing.assert_allclose(cam.dist, np.array([-0.046183, 0.139983, 0.000608, 0.00069]) / 64)
    # R = Rx(pi) @ (rows r11..r33): the first row kept, the other two negated
    np.testing.assert_allclose(cam.R[0], [0.5536380477336265, 0.8046719867383512, 0.2144479094331626])
    np.testing.assert_allclose(cam.R[1], [0.4345300743838753, -0.05946489349975602, -0.8986921279821063])
    np.testing.assert_allclose(cam.R[2], [-0.7104002579937896, 0.5907342212870501, -0.3825762057979294])
    # t = Rx(pi) @ (-rows @ position / 1000), worked out by hand: (0.32111, 0.95633, 2.89072) metres
    np.testing.assert_allclose(cam.t, [0.32110489, 0.95633206, 2.89071305], atol=1e-6)
    for c in cameras:  # the Qualisys position is the camera centre; R is a rotation
        assert abs(np.linalg.det(c.R) - 1) < 1e-9
    np.testing.assert_allclose(cameras[2].centre, [-3.21686586729648, 2.2311786368869416, 2.08819103027083])


def test_world_origin_is_in_front_of_every_camera_and_in_its_image(cameras):
    """Without the rotation about x the scene would lie behind the cameras."""
    P = np.stack([c.P for c in cameras])
    xy = project(P, np.zeros(3))
    assert np.isfinite(xy).all()
    for (u, v), cam in zip(xy, cameras, strict=True):
        assert 0 < u < cam.size[0] and 0 < v < cam.size[1], (cam.name, u, v)


def test_weighted_dlt_recovers_points_and_ignores_unweighted_views(cameras):
    P = np.stack([c.P for c in cameras])
    rng = np.random.default_rng(0)
    X = rng.uniform([-0.5, -0.5, 0.0], [0.5, 0.5, 1.8], (5, 3))  # a body-sized volume at the world origin
    xy = project(P, X)  # [5, 4, 2]
    np.testing.assert_allclose(triangulate(P, xy, np.ones((5, 4))), X, atol=1e-6)
    corrupted = xy.copy()
    corrupted[:, 3] += 200.0  # one view far off: with weight 0 it takes no part
    weights = np.array([0.9, 0.8, 0.7, 0.0])
    X2, err = reprojection_error(P, corrupted, np.broadcast_to(weights, (5, 4)))
    np.testing.assert_allclose(X2, X, atol=1e-6)
    assert np.isnan(err[:, 3]).all() and (err[:, :3] < 1e-4).all()
    _, err_all = reprojection_error(P, corrupted, np.ones((5, 4)))
    assert (np.nanmax(err_all, -1) > 20).all()  # kept, the bad view shows as a large reprojection error
    one_view = triangulate(P, xy, np.array([1.0, 0, 0, 0]))
    assert np.isnan(one_view).all()  # one view cannot be triangulated


def test_bad_calibration_files_name_the_problem(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        read_qca(tmp_path / "missing.qca.txt")
    bad = tmp_path / "bad.qca.txt"
    bad.write_text("this is not xml")
    with pytest.raises(CalibrationError, match="not a Qualisys"):
        read_qca(bad)
    empty = tmp_path / "empty.qca.txt"
    empty.write_text("<calibration><cameras/></calibration>")
    with pytest.raises(CalibrationError, match="no video camera"):
        read_qca(empty)
