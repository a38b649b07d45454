"""The human-motion modality, registered through the ``layersync`` entry point."""

from pathlib import Path

from layersync import Modality, hookimpl

from layersync_motion.output import save_motion
from layersync_motion.samples import conditions, read_samples, save_items
from layersync_motion.t2m import WEIGHTS

RECIPES = Path(__file__).parent / "recipes"

LAYERSYNC_PLUGIN_API = 1  # the layersync.PLUGIN_API this plugin is written for


@hookimpl
def layersync_modalities():
    return {
        "motion": Modality(
            name="motion",
            description="human motion (HumanML3D features) with an MDM-style 1-D SiT, text or action conditions",
            recipe=RECIPES / "mocap.yaml",
            save_samples=save_motion,
            save_items=save_items,
            read_samples=read_samples,
            evaluators=("t2m",),
            conditions=conditions,
        )
    }


@hookimpl
def layersync_datasets():
    return {"humanml3d": "layersync_motion.data:MotionDataset"}


@hookimpl
def layersync_evaluators():
    return {"t2m": "layersync_motion.evaluate:t2m_evaluator"}


@hookimpl
def layersync_weights():
    return dict(WEIGHTS)
