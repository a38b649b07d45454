"""SMPL bodies through smplx, from ``.npz`` model files only.

smplx reads ``.pkl`` model files with pickle, which can run code: here the model file is
read with ``np.load(..., allow_pickle=False)`` and handed to smplx as its data struct.
The SMPL files are licensed (https://smpl.is.tue.mpg.de, registration required) and never
shipped: give a folder laid out as smplx expects (``<folder>/smpl/SMPL_NEUTRAL.npz``) or
the ``.npz`` file itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from layersync.errors import DataError

GENDERS = ("neutral", "male", "female")
SMPL_ARRAYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
SKELETON = 24  # SMPL's joints; the first 22 are HumanML3D's


def model_file(model_path: str | Path, gender: str = "neutral") -> Path:
    """The ``.npz`` SMPL file of ``model_path`` (the file, ``<path>/smpl/SMPL_<GENDER>.npz`` or
    ``<path>/SMPL_<GENDER>.npz``); DataError naming what was looked for."""
    if gender not in GENDERS:
        raise DataError(f"SMPL gender must be one of {', '.join(GENDERS)}, got {gender!r}")
    path, name = Path(model_path), f"SMPL_{gender.upper()}.npz"
    found = [p for p in (path, path / "smpl" / name, path / name) if p.is_file()]
    if found and found[0].suffix == ".npz":
        return found[0]
    if found and found[0].suffix != ".pkl":
        raise DataError(f"SMPL model {found[0]} is not an .npz file")
    pkl = [p for p in (path, path / "smpl" / name, path / name) if p.with_suffix(".pkl").is_file()]
    why = (f"{pkl[0].with_suffix('.pkl')} is a .pkl: only .npz SMPL files are read (smplx loads .pkl with "
           "pickle, which can run code); convert a trusted copy once, e.g. np.savez of its arrays "
           f"{', '.join(SMPL_ARRAYS)}" if pkl else f"no SMPL model at {path}")
    raise DataError(f"{why}. The SMPL files are licensed: register and download them at "
                    f"https://smpl.is.tue.mpg.de, then give the .npz file or a folder holding smpl/{name}")


def load_body(model_path: str | Path, gender: str = "neutral", **kwargs) -> torch.nn.Module:
    """An ``smplx`` SMPL body (``smplx.create(..., model_type='smpl')``) from an ``.npz`` model file.

    ``kwargs`` go to smplx (``batch_size``, ``num_betas``, ...).
    """
    import smplx
    from smplx.utils import Struct

    path = model_file(model_path, gender)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the SMPL model {path} as .npz without pickle: {exc}") from None
    missing = [key for key in SMPL_ARRAYS if key not in arrays]
    if missing:
        raise DataError(f"SMPL model {path} lacks the array(s) {', '.join(missing)}")
    return smplx.create(str(path), model_type="smpl", gender=gender, data_struct=Struct(**arrays), **kwargs)


def body_from_pose(body: torch.nn.Module, body_pose: torch.Tensor, global_orient: torch.Tensor | None = None,
                   transl: torch.Tensor | None = None, betas: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-angle pose -> ``(vertices (B, V, 3), joints (B, 24, 3))``, SMPL's skeleton joints.

    ``body_pose`` (B, 69): the 23 non-root joints; ``global_orient`` (B, 3), ``transl`` (B, 3),
    ``betas`` (B, num_betas): zeros when None.
    """
    n = len(body_pose)
    zeros = body_pose.new_zeros
    out = body(body_pose=body_pose, global_orient=zeros(n, 3) if global_orient is None else global_orient,
               transl=zeros(n, 3) if transl is None else transl,
               betas=zeros(n, body.num_betas) if betas is None else betas)
    return out.vertices, out.joints[:, :SKELETON]


def joints_to_mesh(body: torch.nn.Module, joints: torch.Tensor, steps: int = 200, lr: float = 0.05
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fits an SMPL pose to HumanML3D joints (T, 22, 3) -> ``(vertices (T, V, 3), joints (T, 24, 3))``.

    A plain least-squares fit of pose and translation (mean shape, no pose prior, Adam),
    good enough to look at; MDM's SMPLify fit adds priors.
    """
    target = torch.as_tensor(joints, dtype=torch.float32)
    n = len(target)
    pose = torch.zeros(n, 69, requires_grad=True)
    orient = torch.zeros(n, 3, requires_grad=True)
    transl = (target[:, 0] - body_from_pose(body, torch.zeros(1, 69))[1][0, 0]).detach().requires_grad_(True)
    opt = torch.optim.Adam([pose, orient, transl], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = (body_from_pose(body, pose, orient, transl)[1][:, :22] - target).square().sum(-1).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return body_from_pose(body, pose, orient, transl)
