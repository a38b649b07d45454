"""A frozen CLIP text encoder: the condition of text-to-motion (MDM uses CLIP ViT-B/32's ``encode_text``).

The embedding is CLIP's projected text embedding (512-d for ViT-B/32), not normalised,
read through transformers from a local folder only (no download at run time).
"""

from __future__ import annotations

from pathlib import Path

import torch

from layersync.metrics import MissingWeightsError
from layersync.metrics.weights import weights_dir

CLIP_REPO = "openai/clip-vit-base-patch32"


def default_folder() -> Path:
    """``$LAYERSYNC_WEIGHTS_DIR/clip-vit-base-patch32``."""
    return weights_dir() / CLIP_REPO.split("/")[1]


class TextEncoder:
    """``encode(texts) -> (N, dim)`` float32 CPU tensor, CLIP's ``text_embeds``; frozen, eval mode.

    ``folder``: a ``save_pretrained`` folder holding a CLIP text model (or a full CLIP
    model) and its tokenizer (None: :func:`default_folder`). Texts longer than the
    model's context are truncated, as MDM does (``clip.tokenize(..., truncate=True)``).
    """

    def __init__(self, folder: str | Path | None = None, device: str | torch.device | None = None,
                 batch_size: int = 256):
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        self.folder = Path(folder) if folder is not None else default_folder()
        hint = (f"fetch it with `hf download {CLIP_REPO} --local-dir {self.folder}` "
                "(or set LAYERSYNC_WEIGHTS_DIR to the folder that holds clip-vit-base-patch32)")
        if not (self.folder / "config.json").is_file():
            raise MissingWeightsError(f"no CLIP text encoder in {self.folder} (config.json missing): {hint}")
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(self.folder, local_files_only=True)
            model = CLIPTextModelWithProjection.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise MissingWeightsError(f"cannot load the CLIP text encoder from {self.folder}: {exc}; {hint}") from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.dim = int(model.config.projection_dim)
        self.context = int(model.config.max_position_embeddings)
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> (N, dim) float32 embeddings on the CPU."""
        out = [torch.zeros(0, self.dim)]
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                    max_length=self.context, return_tensors="pt").to(self.device)
            out.append(self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                       .text_embeds.float().cpu())
        return torch.cat(out)
