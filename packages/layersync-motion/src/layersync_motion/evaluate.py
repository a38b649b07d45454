"""HumanML3D text-to-motion metrics as MDM's ``eval/eval_humanml.py`` computes them, and their evaluator.

On the 512-d embeddings of the text-to-motion evaluator (``layersync_motion.t2m``):

* FID: Fréchet distance between the Gaussians of real and generated motion embeddings.
* R-precision top-1/2/3: in groups of 32 (MDM's batches; the remainder is dropped), the
  share of captions whose own motion is among the k motions nearest to the caption's
  embedding (Euclidean), i.e. each text against its own motion and 31 others.
* Matching score: mean distance between a caption and its own motion (over those groups).
* Diversity: mean distance of 300 random pairs of motions (two draws of 300 distinct indices).
* Multimodality: for motions generated repeatedly from one text, the mean distance of 10
  random pairs within each text's motions (one draw of pairs shared by all texts).
* Repeats: the evaluation's random draws (which motions share a group, which pairs) are
  redrawn ``repeats`` times; a metric is the mean and ``*_ci95`` is 1.96 std / sqrt(n)
  (numpy's population std, as MDM reports). FID draws nothing and has no ``_ci95``. MDM's
  replications also regenerate the samples and recrop the real clips: to include that
  variance, run whole evaluations and combine their numbers with ``mean_ci95``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from layersync.errors import ConfigError, DataError
from layersync.metrics import FrechetEvaluator, GaussianStats, frechet_distance
from layersync_motion.t2m import DIM_POSE, EMBED_DIM, UNIT_LENGTH, T2MNetworks, load_t2m

R_PRECISION_GROUP = 32  # MDM: "This must be 32!"
TOP_K = 3
DIVERSITY_TIMES = 300
MM_TIMES = 10
REPEATS = 20  # MDM's replication_times in its wo_mm mode
TAG = "t2m"


@dataclass
class MotionBatch:
    """What ``MotionEvaluator.update`` takes.

    features: RAW HumanML3D features (N, T, 263), as in ``new_joint_vecs`` (not normalised:
        the evaluator applies its own statistics; de-normalise model outputs first).
    lengths: (N,) valid frames of each motion, 4 <= length <= T; frames past it are ignored.
    captions: None, or N lists of HumanML3D ``word/POS`` tokens (``caption_tokens`` reads a
        texts line); R-precision and matching score need them.
    """

    features: torch.Tensor | np.ndarray
    lengths: torch.Tensor | np.ndarray | list
    captions: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.lengths)


# ---------------------------------------------------------------- metric functions

def _array(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.astype(np.float64)


def euclidean_distances(a, b) -> np.ndarray:
    """(N, D), (M, D) -> (N, M) float64 distances."""
    a, b = _array(a), _array(b)
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def r_precision_hits(text, motion, top_k: int = TOP_K) -> np.ndarray:
    """(N, top_k) bool for one group: is text i's own motion among its k nearest motions."""
    order = np.argsort(euclidean_distances(text, motion), axis=1, kind="stable")[:, :top_k]
    own = order == np.arange(len(order))[:, None]
    return np.cumsum(own, axis=1) > 0


def r_precision(text, motion, group: int = R_PRECISION_GROUP, top_k: int = TOP_K) -> np.ndarray:
    """(top_k,) top-k R-precision over consecutive complete groups (the remainder is dropped)."""
    text, motion = _array(text), _array(motion)
    if text.shape != motion.shape:
        raise DataError(f"text embeddings {text.shape} and motion embeddings {motion.shape} do not pair up")
    groups = len(text) // group
    if groups == 0:
        raise DataError(f"R-precision needs at least one group of {group} captioned motions, got {len(text)}")
    hits = [r_precision_hits(text[g * group:(g + 1) * group], motion[g * group:(g + 1) * group], top_k)
            for g in range(groups)]
    return np.concatenate(hits).mean(0)


def matching_score(text, motion) -> float:
    """Mean distance between each text embedding and its own motion's."""
    text, motion = _array(text), _array(motion)
    if text.shape != motion.shape or text.ndim != 2:
        raise DataError(f"text embeddings {text.shape} and motion embeddings {motion.shape} do not pair up")
    return float(np.linalg.norm(text - motion, axis=1).mean())


def diversity(embeddings, times: int = DIVERSITY_TIMES, rng: np.random.Generator | None = None) -> float:
    """Mean distance between ``times`` random pairs (two draws of distinct indices; needs N > times)."""
    x = _array(embeddings)
    if x.ndim != 2 or len(x) <= times:
        raise DataError(f"diversity needs more than {times} embeddings (N, D), got shape {x.shape}")
    rng = rng or np.random.default_rng()
    first, second = rng.choice(len(x), times, replace=False), rng.choice(len(x), times, replace=False)
    return float(np.linalg.norm(x[first] - x[second], axis=1).mean())


def multimodality(embeddings, times: int = MM_TIMES, rng: np.random.Generator | None = None) -> float:
    """(texts, repeats, D) embeddings of motions generated repeatedly from each text -> mean
    distance of ``times`` random pairs within each text's motions (needs repeats > times)."""
    x = _array(embeddings)
    if x.ndim != 3 or x.shape[1] <= times:
        raise DataError(f"multimodality needs embeddings (texts, repeats > {times}, D), got shape {x.shape}")
    rng = rng or np.random.default_rng()
    first, second = rng.choice(x.shape[1], times, replace=False), rng.choice(x.shape[1], times, replace=False)
    return float(np.linalg.norm(x[:, first] - x[:, second], axis=2).mean())


def mean_ci95(values):
    """Mean over runs (axis 0) and its 95% confidence half-width 1.96 std / sqrt(runs)."""
    values = np.asarray(values, np.float64)
    return values.mean(0), 1.96 * values.std(0) / np.sqrt(len(values))


def fid(real, fake) -> float:
    """FID between two sets of (N, D) embeddings (float64 statistics)."""
    a, b = GaussianStats.of(torch.as_tensor(_array(real))), GaussianStats.of(torch.as_tensor(_array(fake)))
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# ---------------------------------------------------------------- the evaluator

def _gathered(arrays: list[np.ndarray], width: tuple[int, ...]) -> np.ndarray:
    """The arrays of every rank, concatenated (rank order); plain concatenation outside torch.distributed."""
    local = np.concatenate(arrays) if arrays else np.zeros((0, *width), np.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        local = np.concatenate(parts)
    return local


def _checked(batch: MotionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, MotionBatch):
        raise DataError(f"the motion evaluator takes a MotionBatch, got {type(batch).__name__}")
    features = torch.as_tensor(batch.features)
    lengths = torch.as_tensor(batch.lengths)
    if features.ndim != 3 or features.shape[2] != DIM_POSE or not features.is_floating_point():
        raise DataError(f"motion features must be float (N, T, {DIM_POSE}) raw HumanML3D features, got "
                        f"{features.dtype} {tuple(features.shape)}")
    if lengths.shape != (len(features),) or lengths.is_floating_point() or lengths.is_complex():
        raise DataError(f"motion lengths must be {len(features)} integers, got {lengths.dtype} {tuple(lengths.shape)}")
    if len(lengths) and (int(lengths.min()) < UNIT_LENGTH or int(lengths.max()) > features.shape[1]):
        raise DataError(f"motion lengths must lie in [{UNIT_LENGTH}, {features.shape[1]}] frames, got "
                        f"{int(lengths.min())}..{int(lengths.max())}")
    valid = torch.arange(features.shape[1])[None, :] < lengths[:, None].cpu()
    if not torch.isfinite(features.cpu()[valid]).all():
        raise DataError("motion features hold NaN or infinite values within their lengths")
    if batch.captions is not None and len(batch.captions) != len(features):
        raise DataError(f"{len(features)} motions but {len(batch.captions)} captions")
    return features, lengths.to(torch.int64)


class MotionEvaluator(FrechetEvaluator):
    """Streams motions (and their captions) through the evaluator; ``compute()`` gives the HumanML3D metrics.

    ``networks``: a ``T2MNetworks`` (None: the published ones from ``weights``). ``batch``: motions
    per forward pass only; R-precision groups are always ``group`` (32) motions. Real motions feed
    FID (and the ``*_real`` metrics when captioned); generated ones all metrics.
    """

    name, items, reference_items = "motion FID", ("generated motions", "real motions"), "real motions"

    def __init__(self, networks: T2MNetworks | None = None, *, weights=None, batch: int = 32, device="cpu",
                 repeats: int = REPEATS, seed: int = 0, group: int = R_PRECISION_GROUP,
                 diversity_times: int = DIVERSITY_TIMES, mm_times: int = MM_TIMES):
        for name, value in (("batch", batch), ("repeats", repeats), ("group", group),
                            ("diversity_times", diversity_times), ("mm_times", mm_times)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"motion evaluator: {name} must be a positive integer, got {value!r}")
        super().__init__(EMBED_DIM, TAG, f"{EMBED_DIM}-d text-to-motion embeddings")
        self.networks = (networks if networks is not None else load_t2m(weights)).to(device).eval()
        self.weights_path = getattr(self.networks, "weights_path", None)
        self.batch, self.repeats, self.seed, self.group = batch, repeats, seed, group
        self.diversity_times, self.mm_times = diversity_times, mm_times
        self.motions = {False: [], True: []}  # motion embeddings per side
        self.pairs = {False: [], True: []}  # (text, motion) embeddings of captioned motions, (n, 2, 512)
        self.multimodal = []  # (texts, repeats, 512)
        self.counts = {False: 0, True: 0}

    def embed(self, features, lengths, captions=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Motion embeddings (N, 512) and, with captions, text embeddings, in chunks of ``batch``."""
        motions, texts = [], []
        for start in range(0, len(lengths), self.batch):
            chunk = slice(start, start + self.batch)
            motions.append(self.networks.motion_embeddings(features[chunk], lengths[chunk]).float().cpu().numpy())
            if captions is not None:
                texts.append(self.networks.text_embeddings(captions[chunk]).float().cpu().numpy())
        motion = np.concatenate(motions) if motions else np.zeros((0, EMBED_DIM), np.float32)
        return motion, (np.concatenate(texts) if captions is not None and texts else None)

    @torch.no_grad()
    def update(self, batch: MotionBatch, real: bool = False) -> None:
        features, lengths = _checked(batch)
        real = bool(real)
        self.counts[real] += len(lengths)
        if real and self.reference is not None:  # precomputed statistics replace the real side
            return
        motion, text = self.embed(features, lengths, batch.captions)
        self.stats[real].update(torch.from_numpy(motion))
        self.motions[real].append(motion)
        if text is not None:
            self.pairs[real].append(np.stack([text, motion], axis=1))

    @torch.no_grad()
    def update_multimodality(self, features, lengths) -> None:
        """Motions generated repeatedly from the same texts: RAW features (texts, repeats, T, 263) and
        lengths (texts, repeats); ``compute()`` then reports ``multimodality``."""
        features, lengths = torch.as_tensor(features), torch.as_tensor(lengths)
        if features.ndim != 4 or lengths.shape != features.shape[:2]:
            raise DataError(f"multimodality takes features (texts, repeats, T, {DIM_POSE}) and lengths "
                            f"(texts, repeats), got {tuple(features.shape)} and {tuple(lengths.shape)}")
        texts, repeats = lengths.shape
        if self.multimodal and self.multimodal[0].shape[1] != repeats:
            raise DataError(f"multimodality: {repeats} motions per text, earlier batches had "
                            f"{self.multimodal[0].shape[1]}")
        flat = MotionBatch(features.reshape(texts * repeats, *features.shape[2:]), lengths.reshape(-1))
        motion, _ = self.embed(*_checked(flat))
        self.multimodal.append(motion.reshape(texts, repeats, -1))

    def _draws(self, rng, pairs: np.ndarray, motions: np.ndarray, multimodal: np.ndarray | None) -> dict:
        """One repeat of the randomly drawn metrics of one side."""
        out = {}
        if len(pairs) >= self.group:
            used = rng.permutation(len(pairs))[: len(pairs) // self.group * self.group]
            text, motion = pairs[used, 0], pairs[used, 1]
            for k, value in enumerate(r_precision(text, motion, self.group, TOP_K), start=1):
                out[f"r_precision_top{k}"] = value
            out["matching_score"] = matching_score(text, motion)
        if len(motions) > self.diversity_times:
            out["diversity"] = diversity(motions, self.diversity_times, rng)
        if multimodal is not None and multimodal.shape[1] > self.mm_times:
            out["multimodality"] = multimodality(multimodal, self.mm_times, rng)
        return out

    def compute(self) -> dict:
        result = super().compute()  # fid
        motions = {side: _gathered(self.motions[side], (EMBED_DIM,)) for side in (False, True)}
        pairs = {side: _gathered(self.pairs[side], (2, EMBED_DIM)) for side in (False, True)}
        multimodal = _gathered(self.multimodal, (0, EMBED_DIM)) if self.multimodal else None
        rng = np.random.default_rng(self.seed)
        runs = {False: [], True: []}
        for _ in range(self.repeats):
            runs[False].append(self._draws(rng, pairs[False], motions[False], multimodal))
            runs[True].append(self._draws(rng, pairs[True], motions[True], None))
        for side, suffix in ((False, ""), (True, "_real")):
            for key in runs[side][0]:
                mean, ci = mean_ci95([run[key] for run in runs[side]])
                result[key + suffix] = float(mean)
                if self.repeats > 1:
                    result[f"{key}{suffix}_ci95"] = float(ci)
        self._warn_skipped(result, pairs[False], motions[False], multimodal)
        counts = _gathered([np.array([[self.counts[False], self.counts[True]]])], (2,)).sum(0)
        result.update(num_samples=int(counts[0]), num_ref=int(counts[1]),
                      reference="precomputed" if self.reference is not None else "computed")
        return result

    def _warn_skipped(self, result, pairs, motions, multimodal) -> None:
        if "r_precision_top1" not in result:
            warnings.warn(f"R-precision and matching score skipped: {len(pairs)} captioned generated motions, "
                          f"fewer than one group of {self.group}", stacklevel=3)
        if "diversity" not in result:
            warnings.warn(f"diversity skipped: it needs more than {self.diversity_times} generated motions, "
                          f"got {len(motions)}", stacklevel=3)
        if multimodal is not None and "multimodality" not in result:
            warnings.warn(f"multimodality skipped: it needs more than {self.mm_times} motions per text, "
                          f"got {multimodal.shape[1]}", stacklevel=3)


def t2m_evaluator(weights=None, batch: int = 32, device="cpu") -> MotionEvaluator:
    """The HumanML3D text-to-motion evaluator (``weights``: the weights folder, a folder laid out like it,
    or ``finest.tar``; see ``layersync_motion.t2m.load_t2m``)."""
    return MotionEvaluator(weights=weights, batch=batch, device=device)
