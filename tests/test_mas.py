import math

import pytest
import torch
from torch import nn

from models.checkpoint import TrainedModel
from models.denoiser import DenoiserConfig
from models.diffusion import Diffusion
from models.mas import MASConfig, SamplingError, mas_sample, pass_tokens, sample_chunk
from models.sds import SDSConfig, sds_lowest_timestep, sds_sample
from models.triangulation import triangulate
from pipeline.cameras import metres_to_units, project, view_rotations
from pipeline.synthetic import generate_motions


class Oracle(nn.Module):
    """Always predicts the z-scored projections of known 3D motions, view by view (batch order S x V)."""

    def __init__(self, targets_z: torch.Tensor, joints: int):
        super().__init__()
        self.targets = targets_z.reshape(-1, *targets_z.shape[2:])
        self.config = DenoiserConfig(num_joints=joints, max_len=64)
        self.calls = 0

    def forward(self, x, t, valid=None):
        self.calls += 1
        assert x.shape == self.targets.shape  # all samples and views in one batch
        return self.targets.clone()


class Constant(nn.Module):
    def __init__(self, value, joints):
        super().__init__()
        self.value = value
        self.config = DenoiserConfig(num_joints=joints, max_len=64)

    def forward(self, x, t, valid=None):
        return torch.full_like(x, self.value)


class Shrink(nn.Module):
    """Predicts x0 = x_t / 2: depends on the noise, so different seeds give different motions."""

    def __init__(self, joints):
        super().__init__()
        self.config = DenoiserConfig(num_joints=joints, max_len=64)

    def forward(self, x, t, valid=None):
        return 0.5 * x


def _trained(model, joints=17, steps=100) -> TrainedModel:
    return TrainedModel(
        model=model,
        diffusion=Diffusion.cosine(steps),
        mean=torch.tensor([0.0, 0.1]).expand(joints, 2).clone(),  # a pose every view can show: all on the axis
        std=torch.full((joints, 2), 0.3),
        skeleton="coco17",
        conf_threshold=0.5,
        fps=30.0,
        step=0,
    )


@pytest.fixture(scope="module")
def known_motions():
    x = torch.tensor(generate_motions(3, 20, seed=5), dtype=torch.float32)
    return x - x.mean(dim=(1, 2), keepdim=True)


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
def test_triangulation_recovers_known_motion_exactly_and_degrades_gracefully(known_motions, projection):
    x = known_motions.double()
    rot = torch.tensor(view_rotations(5))
    points = project(x, rot, 7.0, projection)
    recovered = triangulate(points, rot, 7.0, projection)
    torch.testing.assert_close(recovered, x, atol=1e-7, rtol=0)
    errors = []
    for sigma in (0.001, 0.01, 0.05):
        noisy = points + sigma * torch.randn(points.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        errors.append((triangulate(noisy, rot, 7.0, projection) - x).norm(dim=-1).mean().item())
    assert errors == sorted(errors) and errors[-1] < 0.1  # error grows with noise, about linearly
    assert errors[1] / errors[0] == pytest.approx(10, rel=0.3)


def test_triangulation_weights_ignore_a_bad_view(known_motions):
    x = known_motions.double()
    rot = torch.tensor(view_rotations(4))
    points = project(x, rot, 7.0, "perspective")
    points[:, 2] += 5.0  # one view is garbage
    weights = torch.ones(points.shape[:-1], dtype=x.dtype)
    weights[:, 2] = 0.0
    torch.testing.assert_close(triangulate(points, rot, 7.0, "perspective", weights), x, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="at least 2 views"):
        triangulate(points[:, :1], rot[:1], 7.0)


def test_weighted_triangulation_matches_least_squares_over_any_leading_dims():
    """The normal equations, their closed-form solve and the planes layout against a plain per-point weighted least
    squares (float64 lstsq on the stacked rows), with two leading dimensions and random per-joint weights."""
    gen = torch.Generator().manual_seed(3)
    rot = torch.tensor(view_rotations(4, 0.2))
    points = torch.randn(2, 3, 4, 5, 6, 2, generator=gen, dtype=torch.float64)  # [2, 3, V, L, J, 2]
    weights = torch.rand(points.shape[:-1], generator=gen, dtype=torch.float64) + 0.1
    root = weights.sqrt().movedim(2, -1)  # [2, 3, L, J, V]
    a = (root[..., None, None] * rot[:, :2]).flatten(-3, -2)  # rows of every view's image x and y: [..., 2V, 3]
    b = (root[..., None] * points.movedim(2, -2)).flatten(-2, -1).unsqueeze(-1)  # [..., 2V, 1]
    expected = torch.linalg.lstsq(a, b).solution.squeeze(-1)
    torch.testing.assert_close(triangulate(points, rot, None, "orthographic", weights), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
def test_mas_with_an_oracle_denoiser_returns_the_oracle_motion(known_motions, projection):
    views = 4
    cfg = MASConfig(num_views=views, projection=projection, steps=25)
    rot = torch.tensor(view_rotations(views, cfg.elevation), dtype=torch.float32)
    trained = _trained(None)
    target = trained.normalise(project(known_motions, rot, 7.0 if projection == "perspective" else None, projection))
    oracle = Oracle(target, joints=17)
    trained.model = oracle
    out = mas_sample(trained, num_samples=3, length=20, config=cfg, seed=0)
    assert out.shape == (3, 20, 17, 3)
    assert oracle.calls == 25  # one batched model call per step for all samples and views
    torch.testing.assert_close(out, known_motions, atol=2e-4, rtol=0)


def test_projected_3d_noise_is_standard_normal_in_every_view():
    rot = torch.tensor(view_rotations(5), dtype=torch.float64)
    eps = torch.randn(200_000, 1, 1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = project(eps, rot, None, "orthographic")[..., 0, 0, :]  # [N, V, 2]
    cov = torch.einsum("nvi,nvj->vij", noise, noise) / noise.shape[0]
    torch.testing.assert_close(cov, torch.eye(2, dtype=torch.float64).expand(5, 2, 2), atol=0.02, rtol=0)


def test_mas_is_seeded_and_batched(known_motions):
    trained = _trained(Shrink(17))
    cfg = MASConfig(num_views=3, steps=10)
    a = mas_sample(trained, 2, 16, cfg, seed=1)
    b = mas_sample(trained, 2, 16, cfg, seed=1)
    c = mas_sample(trained, 2, 16, cfg, seed=2)
    torch.testing.assert_close(a, b)
    assert torch.isfinite(a).all() and not torch.allclose(a, c)
    dyn = mas_sample(trained, 2, 16, MASConfig(num_views=3, steps=10, dynamic_views=True), seed=1)
    no3d = mas_sample(trained, 2, 16, MASConfig(num_views=3, steps=10, noise_3d=False), seed=1)
    assert dyn.shape == no3d.shape == (2, 16, 17, 3)


def test_chunked_sampling_is_the_same_algorithm_per_sample():
    """Chunks (the CPU default: about 2.5 M activation elements per denoiser pass) draw from one random stream in
    order: the first chunk of a large set is exactly a set of that size, every chunk is a full MAS run (one model call
    per step each), and the choice of chunk changes nothing but which random numbers a sample gets."""
    trained = _trained(Shrink(17))
    cfg = MASConfig(num_views=3, steps=10)
    small = mas_sample(trained, 2, 16, cfg, seed=4, chunk=2)
    large = mas_sample(trained, 5, 16, cfg, seed=4, chunk=2)
    torch.testing.assert_close(large[:2], small)
    assert large.shape == (5, 16, 17, 3) and not torch.allclose(large[2:4], small)
    calls = []
    original = trained.model.forward
    trained.model.forward = lambda x, t, valid=None: (calls.append(len(x)), original(x, t))[1]
    mas_sample(trained, 5, 16, cfg, seed=4, chunk=2)
    assert calls == [6] * 10 + [6] * 10 + [3] * 10  # chunks of 2, 2, 1 samples x 3 views, 10 steps each
    calls.clear()
    mas_sample(trained, 5, 16, cfg, seed=4, chunk=None)  # the CPU default: 2.5 M elements / (3 x 17 x 512) = 95
    assert calls == [15] * 10
    # passes hold the same activation elements whatever the model: 64 samples of 60 frames at 128 d, 8 of 120 at 512
    assert sample_chunk(trained, None, 5, 120) == 8 and pass_tokens(trained, 1, 120, 5) == 5 * 121
    narrow = _trained(Shrink(17))
    narrow.model.config = DenoiserConfig(num_joints=17, latent_dim=128)
    assert sample_chunk(narrow, None, 5, 60) == 64 and pass_tokens(narrow, 1000, 60, 5) == 320 * 61
    # SDS: the loss keeps the whole set's scale, so a chunk optimises as the same motions would in one pass
    sds_cfg = SDSConfig(iterations=20, projection="orthographic")
    trained.model.forward = original
    alone = sds_sample(trained, 2, 8, sds_cfg, seed=0)
    chunked = sds_sample(trained, 4, 8, sds_cfg, seed=0, chunk=2)
    # the first chunk draws what a set of 2 draws; its loss is scaled by 4, not 2, which Adam cancels (up to its eps)
    torch.testing.assert_close(chunked[:2], alone, atol=1e-4, rtol=0)
    with pytest.raises(SamplingError, match="chunk"):
        mas_sample(trained, 2, 8, cfg, chunk=0)


def test_mas_bad_input_errors():
    with pytest.raises(SamplingError, match="at least 2 views"):
        MASConfig(num_views=1)
    with pytest.raises(SamplingError, match="projection"):
        MASConfig(projection="fisheye")
    with pytest.raises(SamplingError, match="NaN"):
        mas_sample(_trained(Constant(math.nan, 17)), 1, 8, MASConfig(num_views=2, steps=3))
    with pytest.raises(SamplingError, match="max_len"):
        mas_sample(_trained(Constant(0.0, 17)), 1, 100, MASConfig(num_views=2, steps=3))


def test_sds_pulls_projections_towards_the_model():
    # a model that always predicts the mean pose (z = 0): SDS must converge to a motion whose every view is that pose
    trained = _trained(Constant(0.0, 17))
    out = sds_sample(trained, 2, 8, SDSConfig(iterations=300, lr=0.05, projection="orthographic"), seed=0)
    assert out.shape == (2, 8, 17, 3)
    rot = torch.tensor(view_rotations(6), dtype=torch.float32)
    views = project(out, rot, None, "orthographic")
    target = trained.mean.expand_as(views)
    start = project(0.1 * torch.randn(2, 8, 17, 3, generator=torch.Generator().manual_seed(0)), rot, None,
                    "orthographic")  # fmt: skip
    assert (views - target).abs().mean() < 0.5 * (start - target).abs().mean()
    annealed = sds_sample(trained, 1, 8, SDSConfig(iterations=20, annealed=True), seed=0)
    assert torch.isfinite(annealed).all()


def test_sds_follows_the_official_schedule_and_learning_rate():
    # official sample/dreamfusion.py: Adam lr 0.01; t = randint(1, T); annealed t = randint(T-1 - i*T/N, T)
    assert SDSConfig().lr == 0.01
    assert {sds_lowest_timestep(i, 1000, 100, annealed=False) for i in range(1000)} == {1}
    lows = [sds_lowest_timestep(i, 1000, 100, annealed=True) for i in range(1000)]
    assert lows[0] == 99 and lows[10] == 98 and lows[500] == 49 and lows[-1] == 1  # the window widens, top stays
    assert lows == sorted(lows, reverse=True)
    # what the sampler draws: the plain variant covers 1..T-1, never 0; the annealed one starts at T-1
    trained = _trained(Constant(0.0, 17))
    seen = []
    original = trained.diffusion.q_sample
    trained.diffusion.q_sample = lambda x, t, noise: (seen.append(t.clone()), original(x, t, noise))[1]
    sds_sample(trained, 64, 4, SDSConfig(iterations=30, projection="orthographic"), seed=0)
    plain = torch.cat(seen)
    assert plain.min() == 1 and plain.max() == trained.diffusion.num_steps - 1
    seen.clear()
    sds_sample(trained, 8, 4, SDSConfig(iterations=4, annealed=True, projection="orthographic"), seed=0)
    assert (seen[0] == trained.diffusion.num_steps - 1).all() and seen[-1].min() < seen[0].min()


def test_mas_and_sds_take_the_camera_distance_in_metres():
    trained = _trained(Shrink(17))
    trained.mean = torch.tensor(generate_motions(1, 2, seed=1)[0, 0, :, :2], dtype=torch.float32)  # a real pose
    units = metres_to_units(5.0, trained.mean, 1.8)
    by_units = mas_sample(trained, 2, 8, MASConfig(num_views=3, steps=4, distance=units), seed=3)
    by_metres = mas_sample(trained, 2, 8, MASConfig(num_views=3, steps=4, distance_m=5.0), seed=3)
    torch.testing.assert_close(by_metres, by_units)
    other = mas_sample(trained, 2, 8, MASConfig(num_views=3, steps=4, distance_m=5.0, subject_height_m=0.9), seed=3)
    assert not torch.allclose(other, by_units)  # a smaller subject: the same metres are twice as far
    assert MASConfig(distance_m=5.0).camera_distance(trained.mean) == pytest.approx(units)
    assert MASConfig(distance_m=5.0, projection="orthographic").camera_distance(trained.mean) is None
    sds = sds_sample(trained, 1, 8, SDSConfig(iterations=3, distance_m=5.0), seed=0)
    assert torch.isfinite(sds).all()
    with pytest.raises(SamplingError, match="must be positive"):
        MASConfig(distance_m=-2.0)
    flat = _trained(Constant(0.0, 17))  # a mean pose with no height cannot convert metres
    with pytest.raises(SamplingError, match="no height"):
        mas_sample(flat, 1, 8, MASConfig(num_views=2, steps=2, distance_m=5.0))


def test_mas_rigid_bones_option_holds_bone_lengths(known_motions):
    """The skeleton-aware option: the oracle's rigid motion comes back unchanged, a stretched one comes back with
    constant bone lengths (and plain MAS keeps the stretch)."""
    from pipeline.rigid import bone_variation, build_rig
    from pipeline.skeletons import COCO17

    views = 4
    cfg = MASConfig(num_views=views, steps=10, rigid_bones=True)
    assert cfg.to_dict()["rigid_bones"] is True and "rigid_bones" not in MASConfig().to_dict()  # old keys unchanged
    rot = torch.tensor(view_rotations(views, cfg.elevation), dtype=torch.float32)
    rig = build_rig(COCO17)
    scale = 1 + 0.1 * torch.randn(known_motions.shape[:3], generator=torch.Generator().manual_seed(0))[..., None]
    stretched = known_motions * scale  # about 10% length noise per joint and frame
    for motions, rigid_in in ((known_motions, True), (stretched, False)):
        trained = _trained(None)
        trained.model = Oracle(trained.normalise(project(motions, rot, 7.0, "perspective")), joints=17)
        out = mas_sample(trained, num_samples=3, length=20, config=cfg, seed=0)
        plain = mas_sample(trained, num_samples=3, length=20, config=MASConfig(num_views=views, steps=10), seed=0)
        assert bone_variation(out, rig).max() < 1e-5
        if rigid_in:
            torch.testing.assert_close(out, known_motions, atol=2e-4, rtol=0)
        else:
            assert bone_variation(plain, rig).min() > 0.1
            assert (out - plain).norm(dim=-1).mean() < 0.05  # near the triangulated motion, only made rigid


def test_triangulation_survives_singular_systems_and_points_at_a_camera():
    """A joint at (or behind) one camera gave Gauss-Newton weights of 1e12 and a float32 LU failure that stopped a
    whole MAS batch (camera 3 m on motions with a trajectory): now that view gets no weight in the refinement, and a
    system singular in floating point solves to 0 instead of raising."""
    from models.triangulation import _solve_planes, triangulate_perspective
    from pipeline.cameras import to_camera, view_rotations

    # two systems as columns: A's entries 00 01 02 11 12 22, then b; the first A = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    singular, regular = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 2.0, 3.0], [2.0, 0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 4.0, 6.0]
    out = _solve_planes(torch.tensor([singular, regular]).T)
    assert torch.isfinite(out).all() and torch.equal(out[:, 0], torch.zeros(3))
    assert torch.allclose(out[:, 1], torch.tensor([1.0, 2.0, 3.0]))
    rot = torch.as_tensor(view_rotations(5, 0.17), dtype=torch.float32)
    motion = torch.randn(1, 4, 17, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    for reach in (0.98, 1.0, 1.02):  # just in front of, at, and just behind camera 0's centre
        moved = motion.clone()
        moved[0, 0, 0] = -rot[0, 2] * reach
        cam = to_camera(moved, rot)
        depth = 1.0 + cam[..., 2]
        points = cam[..., :2] / torch.where(depth.abs() < 1e-3, torch.full_like(depth, 1e-3), depth).unsqueeze(-1)
        points = points + 0.01 * torch.randn(points.shape, generator=torch.Generator().manual_seed(1))
        out = triangulate_perspective(points, rot, 1.0)
        assert torch.isfinite(out).all(), reach
        others = (out - moved).norm(dim=-1)[0, 1:]  # the joints every camera sees well are still recovered
        assert others.max() < 0.1, (reach, others.max())
