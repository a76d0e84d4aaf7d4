import numpy as np
import pytest

from pipeline.skeletons import SKELETONS, Skeleton, get_skeleton, mirror


@pytest.mark.parametrize(
    "name, joints", [("coco17", 17), ("coco17_ball", 18), ("nba16", 16), ("apt36k17", 17), ("halpe26", 26)]
)
def test_registry_sizes(name, joints):
    skeleton = get_skeleton(name)
    assert skeleton.num_joints == joints
    assert len(skeleton.bones) >= joints - 2


def test_unknown_skeleton_names_the_choices():
    with pytest.raises(KeyError, match="known skeletons: apt36k17, coco17"):
        get_skeleton("smpl")


@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_mirror_pairs_are_left_right(name):
    skeleton = SKELETONS[name]
    assert skeleton.mirror_pairs, "every skeleton has left/right pairs"
    for a, b in skeleton.mirror_pairs:
        left, right = skeleton.joints[a], skeleton.joints[b]
        assert ("left" in left.lower() or left.startswith("L")) and ("right" in right.lower() or right.startswith("R"))
    perm = skeleton.mirror_permutation
    assert sorted(perm) == list(range(skeleton.num_joints))
    assert np.array_equal(perm[perm], np.arange(skeleton.num_joints))


@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_mirror_is_an_involution(name):
    skeleton = SKELETONS[name]
    rng = np.random.default_rng(0)
    motion = rng.normal(size=(4, 10, skeleton.num_joints, 3))
    once = mirror(motion, skeleton)
    assert not np.allclose(once, motion)
    np.testing.assert_array_equal(mirror(once, skeleton), motion)
    np.testing.assert_allclose(mirror(mirror(motion, skeleton, 320.0), skeleton, 320.0), motion, atol=1e-9)


def test_mirror_moves_left_wrist_to_right_side():
    skeleton = get_skeleton("coco17")
    pose = np.zeros((17, 3))
    pose[skeleton.index("left_wrist")] = [0.8, 0.1, 0.9]
    flipped = mirror(pose, skeleton)
    np.testing.assert_array_equal(flipped[skeleton.index("right_wrist")], [-0.8, 0.1, 0.9])
    np.testing.assert_array_equal(flipped[skeleton.index("left_wrist")], [0, 0, 0])


def test_ball_is_not_mirrored_as_a_body_joint():
    skeleton = get_skeleton("coco17_ball")
    ball = skeleton.index("ball")
    assert skeleton.mirror_permutation[ball] == ball
    assert ball not in skeleton.body_joints
    assert all(ball not in bone for bone in skeleton.bones)


def test_mirror_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected a motion"):
        mirror(np.zeros((5, 16, 2)), get_skeleton("coco17"))


def test_invalid_skeleton_definitions_fail():
    with pytest.raises(ValueError):
        Skeleton("bad", ("a", "b"), ((0, 2),), (), (0,))
    with pytest.raises(ValueError):
        Skeleton("bad", ("a", "a"), (), (), (0,))
