"""Builds the shipped mocap set, ``data/mocap.npz``, from the DeepMimic clips in pybullet_data.

    uv run --with pybullet python -m layersync_motion.make_mocap [--out PATH] [--folder DIR]

pybullet (zlib licence) ships DeepMimic's motion clips (``pybullet_data/data/motions/
humanoid3d_*.txt``: per frame its duration, the root position and rotation and the joint
rotations of the DeepMimic humanoid). Each clip is put through that humanoid's forward
kinematics (``humanoid/humanoid.urdf`` at pybullet's 0.25 scale), mapped to the 22
HumanML3D joints (spine, collars, head and toes placed at fixed offsets in the nearest
body's frame), resampled to 20 fps and turned into HumanML3D features by
``kinematics.features_from_joints``. Clips DeepMimic marks cyclic are looped (the
seam blended) to 8 s; the others are single takes framed by a held first and last pose.
Each motion is also mirrored (left and right swapped, as HumanML3D's ``M`` files), and
gets a few English captions, whole-clip and time-span ones (HumanML3D's ``#start#end``),
so sub-windows are items of their own. pybullet is not a dependency of the package: it is
needed only to rerun this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from layersync.files import atomic
from layersync_motion.data import MOCAP, UNIT
from layersync_motion.kinematics import FPS, SLICES, features_from_joints

SCALE = 0.25  # pybullet loads the DeepMimic humanoid.urdf with globalScaling=0.25
LOOP_FRAMES = 161  # joint frames of a looped clip: 160 feature frames, 8 s at 20 fps
HOLDS = ((10, 10), (4, 16), (16, 4))  # held (first, last) frames framing a single take
SPANS = ((0.0, 3.0), (2.0, 6.0), (3.5, 8.0), (1.0, 4.0))  # seconds, time-span captions of looped clips

# Joint offsets of the DeepMimic humanoid (y up, facing +x, right +z), unscaled, from the URDF.
CHEST, NECK = (0, 0.944604, 0), (0, 0.895576, 0)
HIP, KNEE, ANKLE = (0, 0, 0.339548), (0, -1.686184, 0), (0, -1.639480, 0)
SHOULDER, ELBOW, WRIST = (-0.0962, 0.974, 0.73244), (0, -1.099152, 0), (0, -1.035788, 0)
# Where HumanML3D joints without a DeepMimic counterpart sit (metres, in the named body's frame).
EXTRA = {"pelvis": (0, 0.09, 0), "spine1": (-0.02, 0.15, 0), "spine2": (0, 0.04, 0), "spine3": (0, 0.10, 0),
         "collar": (-0.03, 0.20, 0.075), "head": (0.05, 0.07, 0), "toe": (0.12, -0.05, 0)}

# name: (DeepMimic clip, captions); the action label is the name.
CLIPS = {
    "walk": ("walk", ["a person walks forward", "someone walks straight ahead at a steady pace",
                      "a person is walking forward"]),
    "run": ("run", ["a person runs forward", "someone jogs straight ahead quickly", "a person is running forward"]),
    "jump": ("jump", ["a person jumps forward", "someone leaps forward with both feet", "a person hops forward"]),
    "backflip": ("backflip", ["a person does a backflip", "someone flips backward in the air",
                              "a person jumps and flips backward"]),
    "cartwheel": ("cartwheel", ["a person does a cartwheel", "someone turns cartwheels to the side",
                                "a person is doing cartwheels"]),
    "crawl": ("crawl", ["a person crawls forward on hands and knees", "someone crawls on the floor",
                        "a person is crawling forward"]),
    "dance_a": ("dance_a", ["a person dances", "someone dances and sways the arms", "a person is dancing"]),
    "dance_b": ("dance_b", ["a person dances energetically", "someone dances and waves the arms",
                            "a person is dancing in place"]),
    "roll": ("roll", ["a person does a forward roll", "someone rolls forward on the ground",
                      "a person tumbles forward"]),
    "spin": ("spin", ["a person spins around", "someone turns around in place", "a person is spinning"]),
    "spinkick": ("spinkick", ["a person does a spinning kick", "someone spins and kicks",
                              "a person kicks while turning around"]),
    "kick": ("kick", ["a person kicks", "someone kicks forward with one leg", "a person does a kick"]),
    "punch": ("punch", ["a person punches", "someone throws punches forward", "a person is punching"]),
    "getup_facedown": ("getup_facedown", ["a person gets up from lying face down",
                                          "someone lying on the stomach stands up",
                                          "a person stands up from the floor"]),
    "getup_faceup": ("getup_faceup", ["a person gets up from lying on the back",
                                      "someone lying on the back stands up", "a person rises from the ground"]),
}
# Lemma/POS of each caption word, as HumanML3D's spaCy tokens (word/POS).
WORDS = {
    "a": "a/DET", "the": "the/DET", "person": "person/NOUN", "someone": "someone/PRON", "is": "be/AUX",
    "and": "and/CCONJ", "with": "with/ADP", "on": "on/ADP", "in": "in/ADP", "to": "to/ADP", "from": "from/ADP",
    "while": "while/SCONJ", "at": "at/ADP", "one": "one/NUM", "both": "both/DET", "forward": "forward/ADV",
    "backward": "backward/ADV",
    "straight": "straight/ADV", "ahead": "ahead/ADV", "around": "around/ADV", "up": "up/ADP", "quickly": "quickly/ADV",
    "energetically": "energetically/ADV", "steady": "steady/ADJ", "pace": "pace/NOUN", "air": "air/NOUN",
    "feet": "foot/NOUN", "leg": "leg/NOUN", "arms": "arm/NOUN", "hands": "hand/NOUN", "knees": "knee/NOUN",
    "floor": "floor/NOUN", "ground": "ground/NOUN", "side": "side/NOUN", "place": "place/NOUN", "back": "back/NOUN",
    "stomach": "stomach/NOUN", "face": "face/NOUN", "down": "down/ADV", "backflip": "backflip/NOUN",
    "cartwheel": "cartwheel/NOUN", "cartwheels": "cartwheel/NOUN", "roll": "roll/NOUN", "kick": "kick/NOUN",
    "punches": "punch/NOUN", "spinning": "spin/VERB", "walks": "walk/VERB", "walking": "walk/VERB",
    "runs": "run/VERB", "running": "run/VERB", "jogs": "jog/VERB", "jumps": "jump/VERB", "leaps": "leap/VERB",
    "hops": "hop/VERB", "does": "do/VERB", "doing": "do/VERB", "flips": "flip/VERB", "turns": "turn/VERB",
    "crawls": "crawl/VERB", "crawling": "crawl/VERB", "dances": "dance/VERB", "dancing": "dance/VERB",
    "sways": "sway/VERB", "waves": "wave/VERB", "rolls": "roll/VERB", "tumbles": "tumble/VERB",
    "spins": "spin/VERB", "kicks": "kick/VERB", "turning": "turn/VERB", "throws": "throw/VERB",
    "punching": "punch/VERB", "gets": "get/VERB", "stands": "stand/VERB", "rises": "rise/VERB",
    "lying": "lie/VERB",
}
LEFT_RIGHT = [(1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21)]


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z) -> (..., 3, 3) rotation matrices."""
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                     np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                     np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def z_matrix(angle: np.ndarray) -> np.ndarray:
    """Rotations about z (the DeepMimic knee and elbow axis)."""
    c, s, o, i = np.cos(angle), np.sin(angle), np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, -s, o], -1), np.stack([s, c, o], -1), np.stack([o, o, i], -1)], -2)


def humanml_joints(frames: np.ndarray) -> np.ndarray:
    """DeepMimic frames (T, 44) -> the 22 HumanML3D joints (T, 22, 3), y up, facing +z (SMPL's axes)."""
    def q(i):  # the rotation at column i
        return quat_matrix(frames[:, i : i + 4])

    def at(p, r, v, s=SCALE):  # the point v (scaled by s) of a body at p rotated by r
        return p + r @ (np.asarray(v, float) * s)

    root_p, root = frames[:, 1:4], q(4)
    chest = root @ q(8)
    chest_p = at(root_p, root, CHEST)
    neck_p = at(chest_p, chest, NECK)
    j = {"pelvis": at(root_p, root, EXTRA["pelvis"], 1), "spine1": at(root_p, root, EXTRA["spine1"], 1),
         "spine2": at(chest_p, chest, EXTRA["spine2"], 1), "spine3": at(chest_p, chest, EXTRA["spine3"], 1),
         "neck": neck_p, "head": at(neck_p, chest @ q(12), EXTRA["head"], 1)}
    # (side, sign of z, hip, knee, ankle, shoulder, elbow) column offsets of the frame
    for side, sign, hip, knee, ankle, shoulder, elbow in (("right", 1, 16, 20, 21, 25, 29),
                                                           ("left", -1, 30, 34, 35, 39, 43)):
        flip = np.array([1, 1, sign])
        hip_r = root @ q(hip)
        knee_r = hip_r @ z_matrix(frames[:, knee])
        j[f"{side}_hip"] = at(root_p, root, np.array(HIP) * flip)
        j[f"{side}_knee"] = at(j[f"{side}_hip"], hip_r, KNEE)
        j[f"{side}_ankle"] = at(j[f"{side}_knee"], knee_r, ANKLE)
        j[f"{side}_foot"] = at(j[f"{side}_ankle"], knee_r @ q(ankle), EXTRA["toe"], 1)
        j[f"{side}_collar"] = at(chest_p, chest, np.array(EXTRA["collar"]) * flip, 1)
        arm = chest @ q(shoulder)
        j[f"{side}_shoulder"] = at(chest_p, chest, np.array(SHOULDER) * flip)
        j[f"{side}_elbow"] = at(j[f"{side}_shoulder"], arm, ELBOW)
        j[f"{side}_wrist"] = at(j[f"{side}_elbow"], arm @ z_matrix(frames[:, elbow]), WRIST)
    from layersync_motion.kinematics import T2M_JOINT_NAMES

    x = np.stack([j[name] for name in T2M_JOINT_NAMES], 1)
    return np.stack([-x[..., 2], x[..., 1], x[..., 0]], -1)  # DeepMimic +x forward, +z right -> +z forward, -x right


def resample(joints: np.ndarray, times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Linear interpolation of (T, 22, 3) joints sampled at ``times`` to the times ``at``."""
    flat = joints.reshape(len(joints), -1)
    return np.stack([np.interp(at, times, flat[:, k]) for k in range(flat.shape[1])], 1).reshape(len(at), 22, 3)


def looped(joints: np.ndarray, times: np.ndarray, frames: int) -> np.ndarray:
    """A cyclic clip repeated to ``frames`` frames at 20 fps: each cycle moved on by the root's XZ
    displacement over one cycle (as DeepMimic), the pose mismatch at the seam spread over the cycle."""
    period, shift = times[-1], (joints[-1, 0] - joints[0, 0]) * np.array([1, 0, 1])
    ground = joints[:, :1] * np.array([1, 0, 1])
    rel = joints - ground
    rel = rel + (rel[0] - rel[-1]) * (times / period)[:, None, None]  # close the loop
    t = np.arange(frames) / FPS
    cycle, local = np.divmod(t, period)
    return resample(rel + ground, times, local) + cycle[:, None, None] * shift


def single(joints: np.ndarray, times: np.ndarray, hold: tuple[int, int]) -> np.ndarray:
    """A single take at 20 fps framed by ``hold`` frames of its first and last pose."""
    x = resample(joints, times, np.arange(int(times[-1] * FPS) + 1) / FPS)
    return np.concatenate([x[:1].repeat(hold[0], 0), x, x[-1:].repeat(hold[1], 0)])


def mirrored(joints: np.ndarray) -> np.ndarray:
    """Left and right swapped, x negated (HumanML3D's mirror)."""
    x = joints * np.array([-1, 1, 1])
    order = list(range(22))
    for a, b in LEFT_RIGHT:
        order[a], order[b] = b, a
    return x[:, order]


def caption_line(caption: str, start: float = 0.0, end: float = 0.0) -> str:
    """HumanML3D's ``caption#word/POS ...#start#end``."""
    tokens = " ".join(WORDS[w] for w in caption.split())
    return f"{caption}#{tokens}#{start}#{end}"


def humanml_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Std over all frames, each Std group averaged as HumanML3D's ``cal_mean_variance``."""
    mean, std = features.mean(0), features.std(0)
    for part in SLICES.values():
        std[part] = std[part].mean()
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def motions(source: Path, names=None) -> dict[str, tuple[str, np.ndarray, list[str]]]:
    """id -> (action, features (T, 263), caption lines) for the ``names`` of CLIPS (None: all);
    the mirrored ones as ``M_<id>``."""
    out = {}
    for name in names or CLIPS:
        clip, captions = CLIPS[name]
        data = json.loads((source / f"humanoid3d_{clip}.txt").read_text())
        frames = np.asarray(data["Frames"], dtype=np.float64)
        times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
        joints = humanml_joints(frames)
        if data.get("Loop") == "wrap":
            takes = {name: (looped(joints, times, LOOP_FRAMES), [(0.0, 0.0)] + list(SPANS))}
        else:
            takes = {f"{name}_{k}": (single(joints, times, hold), [(0.0, 0.0)]) for k, hold in enumerate(HOLDS)}
        for id_, (x, spans) in takes.items():
            lines = [caption_line(c) for c in captions]
            lines += [caption_line(captions[k % len(captions)], a, b) for k, (a, b) in enumerate(spans[1:])]
            for mid, y in ((id_, x), (f"M_{id_}", mirrored(x))):
                out[mid] = (name, features_from_joints(torch.from_numpy(y)).numpy().astype(np.float32), lines)
    return out


def pack(items: dict, out: Path) -> None:
    """The packed layout ``data.PackedSource`` reads (no pickle)."""
    mean, std = humanml_stats(np.concatenate([f for _, f, _ in items.values()]))
    ids = np.array(sorted(items))
    arrays = {"Mean": mean, "Std": std, "split/train": ids, "split/test": ids,
              "actions": np.array([f"{i} {items[i][0]}" for i in ids])}
    for i in ids:
        arrays[f"new_joint_vecs/{i}"] = items[i][1]
        arrays[f"texts/{i}"] = np.array(items[i][2])
    with atomic(out) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def write_folder(items: dict, folder: Path) -> None:
    """The same data in the HumanML3D folder layout."""
    mean, std = humanml_stats(np.concatenate([f for _, f, _ in items.values()]))
    for sub in ("new_joint_vecs", "texts"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    np.save(folder / "Mean.npy", mean)
    np.save(folder / "Std.npy", std)
    for i, (action, features, lines) in items.items():
        np.save(folder / "new_joint_vecs" / f"{i}.npy", features)
        (folder / "texts" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    for split in ("train", "test"):
        (folder / f"{split}.txt").write_text("\n".join(sorted(items)) + "\n")
    (folder / "actions.txt").write_text("".join(f"{i} {items[i][0]}\n" for i in sorted(items)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=MOCAP, help="the packed .npz (default: the shipped one)")
    p.add_argument("--folder", type=Path, help="also write the HumanML3D folder layout here")
    args = p.parse_args(argv)
    import pybullet_data

    items = motions(Path(pybullet_data.getDataPath()) / "data" / "motions")
    assert all(len(f) // UNIT * UNIT <= 196 and len(f) >= 40 for _, f, _ in items.values())
    pack(items, args.out)
    if args.folder:
        write_folder(items, args.folder)
    frames = sum(len(f) for _, f, _ in items.values())
    print(f"{args.out}: {len(items)} motions, {len(CLIPS)} actions, {frames} frames "
          f"({frames / FPS / 60:.1f} min), {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
