"""HumanML3D features <-> joints: round trips, slice layout, contacts, root integration."""

import math
from itertools import pairwise

import pytest
import torch
from layersync.errors import DataError
from layersync_motion import kinematics as K

F64 = torch.float64


def _rx(a: torch.Tensor) -> torch.Tensor:
    c, s, o, i = a.cos(), a.sin(), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([i, o, o, o, c, -s, o, s, c], -1).unflatten(-1, (3, 3))


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s, o, i = a.cos(), a.sin(), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([c, o, s, o, i, o, -s, o, c], -1).unflatten(-1, (3, 3))


def _fk(root_pos, root_yaw, local: dict, lengths=K.T2M_BONE_LENGTHS) -> torch.Tensor:
    """Joints (T, 22, 3) from a root trajectory, root yaw and per-joint local rotations (T, 3, 3)."""
    T = len(root_pos)
    offsets = torch.tensor(lengths, dtype=F64)[:, None] * torch.tensor(K.T2M_RAW_OFFSETS, dtype=F64)
    pos, rot = [None] * 22, [None] * 22
    pos[0], rot[0] = root_pos, _ry(root_yaw)
    for j in range(1, 22):
        p = K.T2M_PARENTS[j]
        pos[j] = pos[p] + (rot[p] @ offsets[j].expand(T, 3)[..., None])[..., 0]
        rot[j] = rot[p] @ local[j] if j in local else rot[p]
    return torch.stack(pos, 1)


def _walk(T: int = 60, turn: float = 0.025, speed: float = 0.06) -> torch.Tensor:
    """A canonical walk along a curve: on the floor, root XZ at 0 and facing Z+ at frame 0."""
    t = torch.arange(T, dtype=F64)
    yaw = turn * t + 0.3 * (t / T) ** 2
    step = speed * torch.stack([yaw.sin(), torch.zeros_like(t), yaw.cos()], -1)
    root = torch.cat([torch.zeros(1, 3, dtype=F64), step[1:].cumsum(0)]) + torch.tensor([0, 0.9, 0], dtype=F64)
    root[:, 1] += 0.02 * (4 * math.pi * t / 20).cos()
    phase = 2 * math.pi * t / 20
    local = {
        1: _rx(-0.45 * phase.sin()), 2: _rx(0.45 * phase.sin()),  # hips swing
        4: _rx(0.3 * (1 + phase.cos())), 5: _rx(0.3 * (1 - phase.cos())),  # knees bend
        16: _rx(0.5 * phase.sin()), 17: _rx(-0.5 * phase.sin()),  # arms swing
        18: _rx(-0.2 - 0.2 * phase.sin()), 19: _rx(-0.2 + 0.2 * phase.sin()),  # elbows
    }  # fmt: skip
    joints = _fk(root, yaw, local)
    joints[..., 1] -= joints[..., 1].min()
    return joints


def _transform(joints, yaw=2.2, scale=1.3, shift=(3.0, 0.7, -1.5)):
    """Rotate about y, scale and translate (the canonicalisation must undo all three)."""
    return scale * joints @ _ry(torch.tensor(yaw, dtype=F64)).T + torch.tensor(shift, dtype=F64)


def test_slices_cover_263_and_251():
    for slices, width in ((K.SLICES, 263), (K.KIT_SLICES, 251)):
        spans = sorted((s.start, s.stop) for s in slices.values())
        assert spans[0][0] == 0 and spans[-1][1] == width
        assert all(a[1] == b[0] for a, b in pairwise(spans))
    assert sum(s.stop - s.start for s in K.SLICES.values()) == 263 == K.feature_dim(22)
    assert K.SLICES["ric"] == slice(4, 67) and K.SLICES["foot_contact"] == slice(259, 263)


def test_skeleton_constants_agree():
    assert len(K.T2M_JOINT_NAMES) == len(K.T2M_RAW_OFFSETS) == len(K.T2M_BONE_LENGTHS) == len(K.T2M_PARENTS) == 22
    assert K.T2M_PARENTS[:5] == (-1, 0, 0, 0, 1) and K.T2M_PARENTS[13] == 9 and K.T2M_PARENTS[21] == 19
    assert len(K.KIT_PARENTS) == len(K.KIT_RAW_OFFSETS) == 21


def test_round_trip_matches_canonical_walk():
    walk, moved = _walk(), _transform(_walk())
    before = moved.clone()
    feats = K.features_from_joints(moved)
    assert torch.equal(moved, before)  # input left untouched
    assert feats.shape == (len(walk) - 1, 263) and feats.dtype == F64
    torch.testing.assert_close(K.recover_joints(feats), walk[:-1], atol=1e-9, rtol=0)
    torch.testing.assert_close(K.canonical_joints(_transform(walk)), walk, atol=1e-9, rtol=0)
    # Root height is the canonical root y; the ric block keeps absolute heights.
    torch.testing.assert_close(feats[:, 3], walk[:-1, 0, 1])
    torch.testing.assert_close(feats[:, K.SLICES["ric"]].unflatten(-1, (21, 3))[..., 1], walk[:-1, 1:, 1])
    # local_vel is the world step to the next frame seen from the current root frame
    quat, _ = K.recover_root(feats)
    to_world = _ry(2 * torch.atan2(quat[:, 2], quat[:, 0])).transpose(-1, -2)
    local_vel = feats[:, K.SLICES["local_vel"]].unflatten(-1, (22, 3))
    torch.testing.assert_close(local_vel @ to_world.transpose(-1, -2), walk[1:] - walk[:-1])


def test_round_trip_float32_and_long_turn():
    # Past +-180 deg of heading (the reference's arcsin flips one step there; ours does not).
    walk = _walk(T=150, turn=0.06)
    feats = K.features_from_joints(_transform(walk, yaw=-0.4).float())
    assert feats.dtype == torch.float32
    torch.testing.assert_close(K.recover_joints(feats), walk[:-1].float(), atol=2e-4, rtol=0)


def test_uniform_skeleton_sets_reference_lengths():
    walk = _walk(T=12)
    stretched = _fk(
        walk[:, 0], torch.zeros(12, dtype=F64), {}, lengths=[2 * x if i % 2 else x for i, x in enumerate(K.T2M_BONE_LENGTHS)]
    )
    out = K.uniform_skeleton(stretched)
    bones = (out[:, 1:] - out[:, list(K.T2M_PARENTS[1:])]).norm(dim=-1)
    torch.testing.assert_close(bones, torch.tensor(K.T2M_BONE_LENGTHS[1:], dtype=F64).expand(12, 21))
    # bone directions unchanged
    src = stretched[:, 1:] - stretched[:, list(K.T2M_PARENTS[1:])]
    torch.testing.assert_close(
        torch.nn.functional.normalize(out[:, 1:] - out[:, list(K.T2M_PARENTS[1:])], dim=-1),
        torch.nn.functional.normalize(src, dim=-1),
    )


def test_rest_pose_rotations_and_knee_bend():
    T, knee = 5, torch.full((5,), 0.7, dtype=F64)
    joints = _fk(torch.tensor([[0, 1.0, 0]], dtype=F64).expand(T, 3), torch.zeros(T, dtype=F64), {4: _rx(knee)})
    rot = K.features_from_joints(joints)[:, K.SLICES["rot"]].unflatten(-1, (21, 6))
    identity = torch.tensor([1, 0, 0, 0, 1, 0], dtype=F64)
    c, s = math.cos(0.7), math.sin(0.7)
    # joint j's 6-D rotation turns the bone parent(j) -> j: only the left ankle's (7) is bent, about x
    torch.testing.assert_close(rot[:, 6], torch.tensor([1, 0, 0, 0, c, s], dtype=F64).expand(T - 1, 6))
    others = [j - 1 for j in range(1, 22) if j != 7]
    torch.testing.assert_close(rot[:, others], identity.expand(T - 1, 20, 6))


def test_foot_contacts_planted_vs_moving():
    T = 10
    t = torch.arange(T, dtype=F64)
    root = torch.tensor([[0, 1.0, 0]], dtype=F64).expand(T, 3)

    def contacts(rate):
        joints = _fk(root, torch.zeros(T, dtype=F64), {2: _rx(-rate * t)})  # right leg swings forward
        return K.features_from_joints(joints)[:, K.SLICES["foot_contact"]]

    fast = contacts(0.15)  # ~0.13 m/frame at the ankle: above sqrt(0.002) m
    assert (fast[:, :2] == 1).all() and (fast[:, 2:] == 0).all()
    assert (contacts(0.01)[:, 2:] == 1).all()  # ~1 cm/frame counts as planted


def test_local_velocity_and_turn_rate_conventions():
    # A body turning in place at w rad/frame: rot_vel is minus half the heading step once the
    # 20-frame smoothing window lies inside the clip; a still pose has zero local velocity.
    T, w = 220, 0.01
    t = torch.arange(T, dtype=F64)
    joints = _fk(torch.tensor([[0, 1.0, 0]], dtype=F64).expand(T, 3), w * t, {})
    feats = K.features_from_joints(joints)
    torch.testing.assert_close(feats[90:130, 0], torch.full((40,), -w / 2, dtype=F64), atol=1e-6, rtol=0)
    still = K.features_from_joints(_fk(torch.tensor([[0, 1.0, 0]], dtype=F64).expand(4, 3), torch.zeros(4, dtype=F64), {}))
    assert still[:, K.SLICES["local_vel"]].abs().max() < 1e-12 and still[:, :3].abs().max() < 1e-12


def _heading(across: torch.Tensor) -> float:
    """Heading (atan2 of x over z) of forward = up x across."""
    return math.atan2(float(across[2]), float(-across[0]))


def test_root_frame_uses_reference_swapped_hip_heading():
    # Shoulders twisted 0.5 rad against the hips: the initial Z+ facing uses
    # (right - left) hips + (right - left) shoulders, the root frame (left - right) hips + the same
    # shoulders, so frame 0 (identity root) to frame 1 turns by the gap between the two headings.
    T = 4
    j = _fk(
        torch.tensor([[0, 1.0, 0]], dtype=F64).expand(T, 3),
        torch.zeros(T, dtype=F64),
        {9: _ry(torch.full((T,), 0.5, dtype=F64))},
    )
    c = K.canonical_joints(j)[0]
    shoulders = c[17] - c[16]
    true, swapped = _heading(c[2] - c[1] + shoulders), _heading(c[1] - c[2] + shoulders)
    assert abs(true) < 1e-9 and abs(swapped) > 0.5  # canonical frame 0 faces Z+
    feats = K.features_from_joints(j)
    assert feats[0, 0] == pytest.approx(-swapped / 2, abs=1e-9)
    assert feats[1:, 0].abs().max() < 1e-12
    # Chains from spine3 start from the root rotation (identity at frame 0), not spine3's:
    # the left collar's 6-D rotation is the yaw taking +x onto its bone, less the root's yaw.
    bone = c[13] - c[9]
    collar = math.atan2(-float(bone[2]), float(bone[0]))
    rot13 = feats[:, K.SLICES["rot"]].unflatten(-1, (21, 6))[:, 12]
    for frame, yaw in ((0, collar), (1, collar + swapped)):
        expected = torch.tensor([math.cos(yaw), 0, -math.sin(yaw), 0, 1, 0], dtype=F64)
        torch.testing.assert_close(rot13[frame], expected)


def test_root_heading_is_gaussian_smoothed():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    expected = scipy_ndimage.gaussian_filter1d(x.numpy(), 20, axis=0, mode="nearest")
    torch.testing.assert_close(K._gaussian_smooth(x, K.SMOOTH_SIGMA), torch.from_numpy(expected))
    # A small heading step at frame 30 spreads over frames as the sigma-20 Gaussian.
    T, jump = 80, 0.002
    yaw = jump * (torch.arange(T) >= 30).to(F64)
    rot_vel = K.features_from_joints(_fk(torch.tensor([[0, 1.0, 0]], dtype=F64).expand(T, 3), yaw, {}))[:, 0]
    peak = -jump / 2 / (20 * math.sqrt(2 * math.pi))
    assert rot_vel[29] == pytest.approx(peak, rel=1e-3)
    assert rot_vel[9] == pytest.approx(peak * math.exp(-0.5), rel=1e-3)


def test_recover_straight_walk_and_turn_in_place():
    T = 11
    walk = torch.zeros(T, 263, dtype=F64)
    walk[:, 2], walk[:, 3] = 0.05, 0.9  # forward (local z) 5 cm/frame at 0.9 m
    walk[:, K.SLICES["ric"]] = torch.tensor([0.0, 1.5, 0.2] * 21, dtype=F64)
    j = K.recover_joints(walk)
    z = 0.05 * torch.arange(T, dtype=F64)
    torch.testing.assert_close(j[:, 0], torch.stack([torch.zeros(T, dtype=F64), torch.full((T,), 0.9, dtype=F64), z], -1))
    torch.testing.assert_close(
        j[:, 5], torch.stack([torch.zeros(T, dtype=F64), torch.full((T,), 1.5, dtype=F64), z + 0.2], -1)
    )

    spin = torch.zeros(T, 263, dtype=F64)
    spin[:, 0] = math.pi / 40  # half-angle step: the heading turns by -pi/20 a frame
    spin[:, K.SLICES["ric"]] = torch.tensor([0.0, 1.0, 0.5] * 21, dtype=F64)
    j = K.recover_joints(spin)
    torch.testing.assert_close(j[:, 0, [0, 2]], torch.zeros(T, 2, dtype=F64))
    torch.testing.assert_close(j[10, 3], torch.tensor([-0.5, 1.0, 0.0], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(j[5, 3], torch.tensor([-0.5 * math.sqrt(0.5), 1.0, 0.5 * math.sqrt(0.5)], dtype=F64))


def test_recover_is_batch_layout_invariant():
    feats = torch.randn(2, 3, 16, 263, generator=torch.Generator().manual_seed(0)) * 0.1
    batched = K.recover_joints(feats)
    assert batched.shape == (2, 3, 16, 22, 3)
    torch.testing.assert_close(K.recover_joints(feats.flatten(0, 1)), batched.flatten(0, 1))
    torch.testing.assert_close(K.recover_joints(feats[1, 2]), batched[1, 2])
    kit = K.recover_joints(torch.zeros(4, 251), joints_num=21)
    assert kit.shape == (4, 21, 3)


def test_bad_shapes_raise_data_error():
    with pytest.raises(DataError, match=r"\(5, 262\)"):
        K.recover_joints(torch.zeros(5, 262))
    with pytest.raises(DataError, match=r"\(4, 24, 3\)"):
        K.features_from_joints(torch.zeros(4, 24, 3))
    with pytest.raises(DataError, match="T>=2"):
        K.features_from_joints(_walk(T=1))
    with pytest.raises(DataError, match="zero-length bone"):
        K.features_from_joints(torch.zeros(3, 22, 3))
