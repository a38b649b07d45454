"""A pretrained diffusers transformer as a LayerSync backbone.

Time and sign. LayerSync's linear path is x_t = t * x + (1 - t) * noise (t = 1: data) with the
velocity target x - noise. The flow-matching transformers of diffusers (SD3, Flux, Wan) are trained
on x_s = (1 - s) * x + s * noise (s = 1: noise) to predict noise - x. So s = 1 - t and the velocity
is the negated model output: ``forward`` feeds the model timestep ``(1 - t) * scale`` (scale 1000,
as the pipelines do; Flux scales by 1000 itself) and returns ``-output``, which makes the core
objective's defaults (``transport.path=linear``, ``prediction=velocity``) the model's own loss.

Conditions. A dict ``{"text": (B, L, D)[, "pooled": (B, P)]}`` of precomputed text-encoder
outputs, passed as ``encoder_hidden_states`` and ``pooled_projections``. Anything else (the class
labels of an image folder, say) is ignored: the model then sees the null condition. The null
condition is zeros, of ``text_tokens`` tokens where no text is given; ``drop_cond`` zeroes the
dropped rows.

Checkpoints. ``state_dict`` holds the trainable weights only (with LoRA: the adapters), so a run's
checkpoints and EMA stay small and the base is read from ``model.path`` again on load. A deep copy
(the EMA model) shares the frozen base.
"""

from __future__ import annotations

import copy
import inspect

import torch

from layersync.errors import ConfigError
from layersync.objective import taps
from layersync.trees import tree_map
from layersync_diffusers.load import add_lora, find_blocks, load_transformer

# The classes whose prediction (flow matching, noise - x) and call this adapter knows, with the
# factor from s in [0, 1] to their timestep.
FLOW_MODELS = {"SD3Transformer2DModel": 1000.0, "WanTransformer3DModel": 1000.0, "FluxTransformer2DModel": 1.0}


def last(output):
    """A block's output tokens: diffusers' joint blocks return (encoder_hidden_states, hidden_states)."""
    return output[-1] if isinstance(output, tuple) else output


class DiffusersBackbone(torch.nn.Module):
    """The ``Backbone`` protocol over a diffusers transformer (time, sign and conditions: see above)."""

    def __init__(self, transformer: torch.nn.Module, input_shape, text_tokens: int = 1, guidance: float = 3.5):
        super().__init__()
        name = type(transformer).__name__
        self.blocks = find_blocks(transformer)
        if name not in FLOW_MODELS:
            raise ConfigError(f"model.path holds {name}; the diffusers backbone maps the prediction of "
                              f"{', '.join(FLOW_MODELS)} onto the objective, not yet this one")
        self.transformer, self.scale, self.guidance = transformer, FLOW_MODELS[name], float(guidance)
        self.depth = len(self.blocks)
        config = transformer.config
        self.flux = name == "FluxTransformer2DModel"
        channels = config.in_channels // 4 if self.flux else config.in_channels  # Flux: 2x2 patches as channels
        if input_shape[0] != channels:
            raise ConfigError(f"model: {name} takes {channels} input channels, the data has "
                              f"{input_shape[0]} (shape {tuple(input_shape)})")
        accepted = inspect.signature(transformer.forward).parameters
        dims = {"encoder_hidden_states": (text_tokens, config.get("joint_attention_dim") or config.get("text_dim")),
                "pooled_projections": (config.get("pooled_projection_dim"),)}
        self.null_shapes = {key: shape for key, shape in dims.items() if key in accepted}
        self.saved = tuple(n for n, p in self.named_parameters() if p.requires_grad)

    @property
    def checkpoint_blocks(self) -> int:
        """Activation checkpointing (``model.checkpoint_blocks``) is diffusers' own: every block or none."""
        return self.depth if self.transformer.gradient_checkpointing else 0

    @checkpoint_blocks.setter
    def checkpoint_blocks(self, blocks: int) -> None:
        if blocks not in (0, self.depth):
            raise ConfigError(f"model.checkpoint_blocks={blocks}: diffusers checkpoints all {self.depth} blocks of "
                              f"{type(self.transformer).__name__} or none; set model.checkpoint_blocks=all")
        if blocks:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    def conditions(self, cond, batch: int, like: torch.Tensor) -> dict:
        given = {"encoder_hidden_states": cond.get("text"), "pooled_projections": cond.get("pooled")} \
            if isinstance(cond, dict) else {}
        return {key: (given.get(key) if given.get(key) is not None else like.new_zeros(batch, *shape)).to(like.dtype)
                for key, shape in self.null_shapes.items()}

    def drop_cond(self, cond, drop: torch.Tensor):
        if not isinstance(cond, dict):
            return cond
        return tree_map(lambda c: torch.where(drop.reshape(-1, *[1] * (c.dim() - 1)), torch.zeros_like(c), c), cond)

    def forward(self, x, t, cond, capture=()):
        dtype = self.transformer.dtype
        h = x.to(dtype)
        kwargs = self.conditions(cond, len(x), h)
        s = (1 - t).float() * self.scale  # kept in fp32: bf16 would round timesteps near 1000 by 4
        if self.flux:
            h, kwargs = self.flux_inputs(h, kwargs)
        with taps(self.blocks, capture, select=last) as hidden:
            out = self.transformer(hidden_states=h, timestep=s, return_dict=False, **kwargs)[0]
        if self.flux:
            out = self.flux_unpack(out, x.shape)
        return -out.to(x.dtype), dict(hidden)

    def flux_inputs(self, h, kwargs):
        """Flux takes 2x2 patches as tokens with their (0, row, column) ids, and a guidance value."""
        b, c, height, width = h.shape
        tokens = h.reshape(b, c, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)
        ids = torch.zeros(height // 2, width // 2, 3, device=h.device, dtype=h.dtype)
        ids[..., 1] += torch.arange(height // 2, device=h.device, dtype=h.dtype)[:, None]
        ids[..., 2] += torch.arange(width // 2, device=h.device, dtype=h.dtype)[None, :]
        text = kwargs["encoder_hidden_states"]
        kwargs = {**kwargs, "img_ids": ids.reshape(-1, 3), "txt_ids": text.new_zeros(text.shape[1], 3)}
        if self.transformer.config.guidance_embeds:
            kwargs["guidance"] = h.new_full((b,), self.guidance)
        return tokens, kwargs

    @staticmethod
    def flux_unpack(out, shape):
        b, c, height, width = shape
        return out.reshape(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(shape)

    def __deepcopy__(self, memo):
        """A copy (the trainer's EMA model) shares the frozen base and copies the rest."""
        for p in self.parameters():
            if not p.requires_grad:
                memo[id(p)] = p
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        full = super().state_dict(*args, prefix=prefix, keep_vars=keep_vars)
        keep = {prefix + name for name in self.saved}
        state = {key: value for key, value in full.items() if key in keep}
        if destination is None:
            return state
        destination.update(state)
        return destination

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        missing, unexpected = sorted(set(self.saved) - set(state)), sorted(set(state) - set(self.saved))
        if strict and (missing or unexpected):
            raise RuntimeError(f"the {type(self.transformer).__name__} adapter's trainable weights do not match: "
                               f"missing {missing[:4]}, unexpected {unexpected[:4]}")
        return super().load_state_dict(state, strict=False, assign=assign)


def build_diffusers(input_shape, num_classes: int, path: str, dtype: str = "fp32", lora: dict | None = None,
                    text_tokens: int = 1, guidance: float = 3.5):
    """The ``diffusers`` backbone: the transformer in ``path`` (frozen in ``dtype`` with ``lora``,
    ``{rank, alpha, target_modules, dropout}``; all of it trained in fp32 without)."""
    if lora is None and dtype != "fp32":
        raise ConfigError(f"model.dtype={dtype}: only a frozen base (model.lora) may be held in {dtype}")
    transformer = load_transformer(path, dtype)
    if lora is not None:
        if not isinstance(lora, dict):
            raise ConfigError(f"model.lora={lora!r}: expected a mapping {{rank, alpha, target_modules}}")
        try:
            add_lora(transformer, **lora)
        except TypeError as exc:
            raise ConfigError(f"model.lora: {exc}") from None
    return DiffusersBackbone(transformer, input_shape, text_tokens, guidance)
