"""The HumanML3D motion representation: joints <-> 263-d features (KIT-ML: 251-d).

Facts follow EricGuo5513/HumanML3D (``paramUtil.py``, ``common/skeleton.py``,
``motion_representation.ipynb``) and MDM's ``recover_from_ric``. Conventions: y up,
metres, 20 fps, quaternions (w, x, y, z) Hamilton. ``features_from_joints`` turns T frames
of SMPL-order joints into T-1 rows (row t: frame t and its step to t+1); ``recover_joints``
turns rows back into joints; ``canonical_joints`` is the reference's preprocessing
(uniform skeleton, floor, origin, Z+ facing) that the features are taken from.

====================  ======  =====================================================
``root_rot_vel``      1       per-frame yaw change of the root frame, as the
                              quaternion half-angle (arcsin of its y part)
``root_lin_vel``      2       root XZ displacement to the next frame, in that frame's
                              root (heading) frame
``root_height``       1       root y
``ric``               21x3    joints 1..21 minus the root's XZ, in the root frame
                              (y stays absolute height)
``rot``               21x6    joints 1..21 local rotations, continuous 6-D (first two
                              rotation-matrix columns)
``local_vel``         22x3    world joint displacement to the next frame, in the
                              current root frame
``foot_contact``      4       left ankle, left foot, right ankle, right foot: squared
                              displacement to the next frame < 0.002 m^2
====================  ======  =====================================================

The root frame is the reference's inverse-kinematics heading: forward = up x across,
Gaussian-smoothed over time (sigma 20 frames), with the first frame's rotation set to
identity. Its ``across`` vector is (left hip - right hip) + (right shoulder - left
shoulder), the reference's swapped-hip unpacking (MDM's ``fix_bug=False`` default), kept
because every HumanML3D feature file is defined by it; the initial Z+ facing uses the
unswapped (right - left) sum, as the reference does.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from layersync.errors import DataError
from torch import Tensor

FPS = 20
FEET_THRESHOLD = 0.002  # squared metres per frame
SMOOTH_SIGMA = 20.0  # frames, Gaussian on the IK forward direction (truncated at 4 sigma)

T2M_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
)  # fmt: skip
T2M_KINEMATIC_CHAIN = ((0, 2, 5, 8, 11), (0, 1, 4, 7, 10), (0, 3, 6, 9, 12, 15), (9, 14, 17, 19, 21), (9, 13, 16, 18, 20))
# Unit direction of each joint from its parent in the reference's rest frame.
T2M_RAW_OFFSETS = (
    (0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0), (0, 1, 0), (0, -1, 0),
    (0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1),
    (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0),
)  # fmt: skip
# Bone lengths (m) of the reference skeleton, HumanML3D clip 000021's first frame, to which
# every clip is rescaled (values as transcribed in a third-party port; the clip is not public).
T2M_BONE_LENGTHS = (
    0.0, 0.10307395, 0.10988335, 0.13156825, 0.39362314, 0.39018813, 0.14319026, 0.43243298,
    0.42564332, 0.057364706, 0.14338174, 0.14941867, 0.21936, 0.13748683, 0.14338283,
    0.10303927, 0.13161398, 0.1229843, 0.25683984, 0.26309186, 0.26601186, 0.2698763,
)  # fmt: skip
T2M_FACE_JOINTS = (2, 1, 17, 16)  # right hip, left hip, right shoulder, left shoulder
T2M_FOOT_JOINTS = ((7, 10), (8, 11))  # (left ankle, left foot), (right ankle, right foot)
T2M_LEG_JOINTS = (5, 8)  # right knee, right ankle: thigh + shin set the root scale

# KIT-ML (21 joints, 251 features, 12.5 fps); recover_joints handles it, features_from_joints does not.
KIT_FPS = 12.5
KIT_FEET_THRESHOLD = 0.05
KIT_KINEMATIC_CHAIN = ((0, 11, 12, 13, 14, 15), (0, 16, 17, 18, 19, 20), (0, 1, 2, 3, 4), (3, 5, 6, 7), (3, 8, 9, 10))
KIT_RAW_OFFSETS = (
    (0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0),
    (-1, 0, 0), (0, -1, 0), (0, -1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1),
    (-1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1),
)  # fmt: skip
KIT_FACE_JOINTS = (11, 16, 5, 8)  # same order as T2M_FACE_JOINTS
KIT_FOOT_JOINTS = ((19, 20), (14, 15))  # (left), (right)
KIT_LEG_JOINTS = (17, 18)


def parents_of(chain: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """Parent index of every joint (-1 for the root) from a kinematic chain."""
    parents = [-1] * (1 + max(j for c in chain for j in c))
    for c in chain:
        for a, b in pairwise(c):
            parents[b] = a
    return tuple(parents)


T2M_PARENTS = parents_of(T2M_KINEMATIC_CHAIN)
KIT_PARENTS = parents_of(KIT_KINEMATIC_CHAIN)


def feature_dim(joints_num: int) -> int:
    """Feature width for a skeleton: 263 for 22 joints, 251 for 21."""
    return 12 * joints_num - 1


def feature_slices(joints_num: int = 22) -> dict[str, slice]:
    """Name -> slice of the feature vector (see the module docstring)."""
    widths = {
        "root_rot_vel": 1, "root_lin_vel": 2, "root_height": 1, "ric": 3 * (joints_num - 1),
        "rot": 6 * (joints_num - 1), "local_vel": 3 * joints_num, "foot_contact": 4,
    }  # fmt: skip
    out, start = {}, 0
    for name, width in widths.items():
        out[name] = slice(start, start + width)
        start += width
    return out


SLICES = feature_slices(22)
KIT_SLICES = feature_slices(21)


# ---- quaternions (w, x, y, z) ----


def _qmul(q: Tensor, r: Tensor) -> Tensor:
    w1, v1, w2, v2 = q[..., :1], q[..., 1:], r[..., :1], r[..., 1:]
    return torch.cat([w1 * w2 - (v1 * v2).sum(-1, keepdim=True), w1 * v2 + w2 * v1 + torch.cross(v1, v2, dim=-1)], -1)


def _qinv(q: Tensor) -> Tensor:
    return torch.cat([q[..., :1], -q[..., 1:]], -1)


def _qrot(q: Tensor, v: Tensor) -> Tensor:
    shape = torch.broadcast_shapes(q.shape[:-1], v.shape[:-1])
    q, v = q.expand(shape + (4,)), v.expand(shape + (3,))
    uv = torch.cross(q[..., 1:], v, dim=-1)
    return v + 2 * (q[..., :1] * uv + torch.cross(q[..., 1:], uv, dim=-1))


def _qbetween(u: Tensor, v: Tensor) -> Tensor:
    """Shortest-arc rotation taking direction u to v, w >= 0 (for opposite directions: a half turn about a normal of u)."""
    scale = u.norm(dim=-1, keepdim=True) * v.norm(dim=-1, keepdim=True)
    q = torch.cat([scale + (u * v).sum(-1, keepdim=True), torch.cross(u, v, dim=-1)], -1)
    norm = q.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    normal = torch.cross(u, torch.where(u[..., :1].abs() < 0.9 * u.norm(dim=-1, keepdim=True), eye[0], eye[1]), dim=-1)
    half_turn = torch.cat([torch.zeros_like(norm), torch.nn.functional.normalize(normal, dim=-1)], -1)
    return torch.where(norm > 1e-9 * scale, q / norm.clamp_min(1e-30), half_turn)


def _yaw_quat(half_angle: Tensor) -> Tensor:
    z = torch.zeros_like(half_angle)
    return torch.stack([half_angle.cos(), z, half_angle.sin(), z], -1)


def _cont6d(q: Tensor) -> Tensor:
    """First two columns of the rotation matrix, concatenated."""
    eye = torch.eye(3, dtype=q.dtype, device=q.device)
    return torch.cat([_qrot(q, eye[0]), _qrot(q, eye[1])], -1)


# ---- features -> joints ----


def _check_features(features: Tensor, joints_num: int) -> Tensor:
    features = torch.as_tensor(features)
    if features.ndim < 2 or features.shape[-1] != feature_dim(joints_num) or not features.is_floating_point():
        raise DataError(
            f"features: expected a float tensor (..., T, {feature_dim(joints_num)}) for {joints_num} joints, "
            f"got {features.dtype} {tuple(features.shape)}"
        )
    return features


def recover_root(features: Tensor) -> tuple[Tensor, Tensor]:
    """Root yaw quaternions (..., T, 4) (world -> root frame) and root positions (..., T, 3).

    The yaw integrates ``root_rot_vel`` (frame 0 is identity); the XZ position integrates
    ``root_lin_vel`` rotated back to the world, starting at 0; y is ``root_height``.
    """
    if features.ndim < 2 or features.shape[-1] < 4:
        raise DataError(f"features: expected (..., T, >=4), got {tuple(features.shape)}")
    rot_vel = features[..., 0]
    half = torch.cat([torch.zeros_like(rot_vel[..., :1]), rot_vel[..., :-1]], -1).cumsum(-1)
    quat = _yaw_quat(half)
    step = torch.zeros(features.shape[:-1] + (3,), dtype=features.dtype, device=features.device)
    step[..., 1:, 0], step[..., 1:, 2] = features[..., :-1, 1], features[..., :-1, 2]
    pos = _qrot(_qinv(quat), step).cumsum(-2)
    pos[..., 1] = features[..., 3]
    return quat, pos


def recover_joints(features: Tensor, joints_num: int = 22) -> Tensor:
    """Joint positions (..., T, joints_num, 3) from features (..., T, 12*joints_num-1), as MDM's recover_from_ric."""
    features = _check_features(features, joints_num)
    quat, root = recover_root(features)
    ric = features[..., 4 : 4 + 3 * (joints_num - 1)].unflatten(-1, (joints_num - 1, 3))
    joints = _qrot(_qinv(quat)[..., None, :], ric)
    joints = joints + _xz(root)[..., None, :]
    return torch.cat([root[..., None, :], joints], -2)


# ---- joints -> features ----


def _float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def _xz(x: Tensor) -> Tensor:
    """x with its y set to 0."""
    return x * torch.tensor([1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)


def _check_joints(joints: Tensor, min_frames: int = 1) -> Tensor:
    joints = torch.as_tensor(joints)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3) or joints.shape[0] < min_frames:
        raise DataError(f"joints: expected (T>={min_frames}, 22, 3) HumanML3D joints, got {tuple(joints.shape)}")
    if not torch.isfinite(joints).all():
        raise DataError(f"joints: non-finite values in {tuple(joints.shape)}")
    bones = (joints[:, 1:] - joints[:, list(T2M_PARENTS[1:])]).norm(dim=-1)
    if (bones < 1e-6).any():
        t, j = divmod(int(bones.argmin()), 21)
        raise DataError(f"joints: zero-length bone to joint {j + 1} ({T2M_JOINT_NAMES[j + 1]}) at frame {t}")
    return joints.double()


def uniform_skeleton(joints: Tensor, bone_lengths: tuple[float, ...] = T2M_BONE_LENGTHS) -> Tensor:
    """Rescale a (T, 22, 3) motion to the reference bone lengths, as the reference's IK/FK does.

    The root trajectory is scaled by the ratio of right thigh + shin (frame 0) and each bone
    keeps its direction with the target length; this closed form equals the reference's
    IK-then-FK result (its IK rotates each raw offset onto the bone, its FK re-applies it).
    """
    src = _check_joints(joints)
    lengths = torch.tensor(bone_lengths, dtype=src.dtype, device=src.device)
    if lengths.shape != (22,):
        raise DataError(f"bone_lengths: expected 22 values, got {tuple(lengths.shape)}")
    leg = sum((src[0, j] - src[0, T2M_PARENTS[j]]).norm() for j in T2M_LEG_JOINTS)
    out = torch.empty_like(src)
    out[:, 0] = src[:, 0] * (lengths[list(T2M_LEG_JOINTS)].sum() / leg)
    for chain in T2M_KINEMATIC_CHAIN:
        for p, j in pairwise(chain):
            bone = src[:, j] - src[:, p]
            out[:, j] = out[:, p] + lengths[j] * bone / bone.norm(dim=-1, keepdim=True)
    return out.to(_float_dtype(torch.as_tensor(joints)))


def canonical_joints(joints: Tensor, bone_lengths: tuple[float, ...] | None = T2M_BONE_LENGTHS) -> Tensor:
    """The reference's preprocessing of (T, 22, 3) joints: uniform skeleton (skipped if
    ``bone_lengths`` is None), lowest joint on the floor, frame-0 root XZ at the origin,
    frame-0 facing Z+. ``recover_joints(features_from_joints(j))`` returns this, less the last frame."""
    x = _check_joints(uniform_skeleton(joints, bone_lengths) if bone_lengths is not None else joints)
    x = x - _xz(x[0, 0])  # frame-0 root XZ at the origin
    x[..., 1] -= x[..., 1].min()  # lowest joint on the floor
    r_hip, l_hip, r_sdr, l_sdr = T2M_FACE_JOINTS
    across = x[0, r_hip] - x[0, l_hip] + x[0, r_sdr] - x[0, l_sdr]
    heading = torch.atan2(across[2], -across[0])  # forward = up x across = (a_z, 0, -a_x)
    x = _qrot(_yaw_quat(-heading / 2).expand(x.shape[:-1] + (4,)), x)
    return x.to(_float_dtype(torch.as_tensor(joints)))


def _gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    """Gaussian filter along dim 0, edge values repeated (scipy gaussian_filter1d, mode='nearest')."""
    radius = int(4.0 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, device=x.device)
    weights = torch.exp(-0.5 * (taps.to(x.dtype) / sigma) ** 2)
    index = (torch.arange(len(x), device=x.device)[:, None] + taps).clamp(0, len(x) - 1)
    return torch.einsum("tkc,k->tc", x[index], weights / weights.sum())


def root_rotations(joints: Tensor) -> Tensor:
    """The reference's per-frame root yaw quaternions (T, 4) (world -> root frame) for canonical joints."""
    x = torch.as_tensor(joints)
    r_hip, l_hip, r_sdr, l_sdr = T2M_FACE_JOINTS
    across = x[:, l_hip] - x[:, r_hip] + x[:, r_sdr] - x[:, l_sdr]  # the reference's swapped hips
    across = across / across.norm(dim=-1, keepdim=True)
    forward = _gaussian_smooth(torch.stack([across[:, 2], -across[:, 0]], -1), SMOOTH_SIGMA)  # (x, z)
    quat = _yaw_quat(-torch.atan2(forward[:, 0], forward[:, 1]) / 2)  # w >= 0, as qbetween(forward, Z+)
    quat[0] = 0.0
    quat[0, 0] = 1.0  # the reference sets frame 0 to identity
    return quat


def _local_rotations(x: Tensor, root: Tensor) -> Tensor:
    """Per-joint local quaternions (T, 22, 4) of the reference's IK; each chain starts from the root rotation."""
    raw = torch.tensor(T2M_RAW_OFFSETS, dtype=x.dtype, device=x.device)
    local = torch.zeros(x.shape[:-1] + (4,), dtype=x.dtype, device=x.device)
    local[:, 0] = root
    for chain in T2M_KINEMATIC_CHAIN:
        prev = root
        for p, j in pairwise(chain):
            glob = _qbetween(raw[j].expand_as(x[:, j]), x[:, j] - x[:, p])
            local[:, j] = _qmul(_qinv(prev), glob)
            prev = glob
    return local


def features_from_joints(
    joints: Tensor,
    feet_threshold: float = FEET_THRESHOLD,
    bone_lengths: tuple[float, ...] | None = T2M_BONE_LENGTHS,
) -> Tensor:
    """HumanML3D features (T-1, 263) from SMPL-order joints (T, 22, 3) in metres, y up, at 20 fps.

    The motion is first canonicalised (``canonical_joints``). Returns the input's float dtype
    (float32 for non-float input); computed in float64.
    """
    src = torch.as_tensor(joints)
    _check_joints(src, min_frames=2)
    x = canonical_joints(src.double(), bone_lengths)
    root = root_rotations(x)
    step = x[1:] - x[:-1]
    contact = [(step[:, list(feet)] ** 2).sum(-1) < feet_threshold for feet in T2M_FOOT_JOINTS]

    ric = _qrot(root[:, None], x - _xz(x[:, :1]))[:, 1:]
    lin_vel = _qrot(root[1:], step[:, 0])[:, [0, 2]]
    delta = _qmul(root[1:], _qinv(root[:-1]))
    # arcsin of the y part, as the reference, taken with w >= 0 (q and -q are one rotation): where the
    # heading crosses +-180 deg, w < 0 and the reference's arcsin flips that frame's turn.
    delta = torch.where(delta[:, :1] < 0, -delta, delta)
    rot_vel = torch.asin(delta[:, 2].clamp(-1, 1))
    rot = _cont6d(_local_rotations(x, root))[:, 1:]
    local_vel = _qrot(root[:-1, None], step)

    n = len(x) - 1
    out = torch.cat(
        [
            rot_vel[:, None], lin_vel, x[:-1, 0, 1:2], ric[:-1].reshape(n, -1), rot[:-1].reshape(n, -1),
            local_vel.reshape(n, -1), torch.cat(contact, -1).to(x.dtype),
        ],
        -1,
    )  # fmt: skip
    return out.to(_float_dtype(src))
