"""The text-to-motion evaluator of Guo et al. (CVPR 2022) as MDM runs it on HumanML3D.

Three networks, written here module for module so that the published checkpoint
(``t2m/text_mot_match/model/finest.tar``, keys ``movement_encoder``,
``motion_encoder``, ``text_encoder``) loads key for key:

* ``MovementConvEncoder``: the 259 features a frame has without its 4 foot contacts
  -> two Conv1d (kernel 4, stride 2, padding 1), each followed by dropout 0.2 and
  LeakyReLU 0.2 -> Linear; one 512-d movement per 4 frames (the unit length).
* ``MotionEncoderBiGRUCo``: movements -> Linear 512->1024 -> BiGRU 1024 from a learned
  initial state -> [Linear 2048->1024, LayerNorm, LeakyReLU, Linear 1024->512].
* ``TextEncoderBiGRUCo``: per token a 300-d GloVe vector plus a learned projection
  (Linear 15->300) of the 15-way part-of-speech one-hot -> Linear 300->512 -> BiGRU 512
  -> [Linear 1024->512, LayerNorm, LeakyReLU, Linear 512->512].

Motions enter as RAW HumanML3D features (``new_joint_vecs``, 263 per frame) and are
normalised here with the evaluator's own statistics (MDM's ``dataset/t2m_mean.npy`` and
``t2m_std.npy``, what MDM's ``hml_mode='gt'`` loader and its renormalisation of generated
motions use), lengths floored to multiples of 4, frames past the floored length set to 0
after normalisation and the clip padded to 196 frames, as the reference's dataset does.
Captions enter as HumanML3D ``word/POS`` tokens; see ``WordVectors``.

Files (``WEIGHTS``), looked up in the weights folder under the paths MDM's checkout has
after its ``prepare/download_t2m_evaluators.sh`` and ``download_glove.sh``:
the checkpoint, the two normalisation files and the word vectors
(``glove/our_vab_data.npy``, ``our_vab_words.pkl``, ``our_vab_idx.pkl``). The checkpoint
is read with ``torch.load(weights_only=True)``; the word lists, Python pickles, with an
unpickler that builds nothing but lists, dicts, str and int (``read_plain_pickle``).
"""

from __future__ import annotations

import builtins
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from layersync.errors import DataError
from layersync.metrics import MissingWeightsError, WeightFile, resolve_weights
from layersync.metrics.weights import weights_dir

DIM_POSE = 263
FOOT_CONTACTS = 4  # the last 4 features; the movement encoder does not read them
UNIT_LENGTH = 4  # frames per movement (two stride-2 convolutions)
MAX_MOTION_LENGTH = 196  # the reference pads every clip to this many frames
MAX_TEXT_WORDS = 20
TEXT_TOKENS = MAX_TEXT_WORDS + 2  # with sos/eos
WORD_DIM = 300
EMBED_DIM = 512

# Part-of-speech one-hot (utils/word_vectorizer.py of text-to-motion): index = position here.
POS_TAGS = ("VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
            "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER")
POS_INDEX = {tag: i for i, tag in enumerate(POS_TAGS)}
# Words whose tag is replaced by a "very important" category whatever the tagger said.
VIP_WORDS = {
    "Loc_VIP": ("left", "right", "clockwise", "counterclockwise", "anticlockwise", "forward", "back",
                "backward", "up", "down", "straight", "curve"),
    "Body_VIP": ("arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee",
                 "shoulder", "thigh"),
    "Obj_VIP": ("stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball",
                "basketball"),
    "Act_VIP": ("walk", "run", "swing", "pick", "bring", "kick", "put", "squat", "throw", "hop", "dance",
                "jump", "turn", "stumble", "stop", "sit", "lift", "lower", "raise", "wash", "stand", "kneel",
                "stroll", "rub", "bend", "balance", "flap", "jog", "shuffle", "lean", "rotate", "spin",
                "spread", "climb"),
    "Desc_VIP": ("slowly", "carefully", "fast", "careful", "slow", "quickly", "happy", "angry", "sad",
                 "happily", "angrily", "sadly"),
}
_VIP_OF = {word: tag for tag, words in VIP_WORDS.items() for word in words}

_T2M_COMMIT = "72df96ec453edea2fbe9603b1d58a955eaf71636"  # EricGuo5513/text-to-motion, main
_MDM_COMMIT = "d4fd88c86d9210b85323783a73acb9b794d73e44"  # GuyTevet/motion-diffusion-model, main
_EVALUATOR_ZIP = "https://drive.google.com/file/d/1O_GUHgjDbl2tgbyfSwZOUYXDACnk25Kb/view"

T2M_CHECKPOINT = WeightFile(
    name="t2m-evaluator",
    filename="t2m/text_mot_match/model/finest.tar",
    # Inside t2m.zip, the Google Drive file MDM's prepare/download_t2m_evaluators.sh fetches
    # (since 2025-01; 1DSaKqWX2HlwBtVH5l7DdW96jeYUIXsOP before). Neither the archive nor the
    # checkpoint has a published size or checksum.
    url=_EVALUATOR_ZIP,
    size=None,
    sha256=None,
    licence="MIT",
)
T2M_MEAN = WeightFile(
    name="t2m-mean", filename="dataset/t2m_mean.npy",
    url=f"https://raw.githubusercontent.com/GuyTevet/motion-diffusion-model/{_MDM_COMMIT}/dataset/t2m_mean.npy",
    size=2232, sha256="0bdb5ba69a3a9e34d71990db15bc535ebc024c8d95ddb5574196f96058faa7d3", licence="MIT")
T2M_STD = WeightFile(
    name="t2m-std", filename="dataset/t2m_std.npy",
    url=f"https://raw.githubusercontent.com/GuyTevet/motion-diffusion-model/{_MDM_COMMIT}/dataset/t2m_std.npy",
    size=2232, sha256="6a5f7d60301c9465972fc225f8ad0ee8f957e7720431189123eb6d15873a9557", licence="MIT")
_GLOVE = f"https://raw.githubusercontent.com/EricGuo5513/text-to-motion/{_T2M_COMMIT}/glove/"
GLOVE_VECTORS = WeightFile(
    name="t2m-glove-vectors", filename="glove/our_vab_data.npy", url=_GLOVE + "our_vab_data.npy",
    size=None, sha256=None,  # 4199 x 300 vectors; the blob was not in the snapshot read, so not measured
    licence="MIT (text-to-motion); vectors from GloVe, PDDL-1.0")
GLOVE_WORDS = WeightFile(
    name="t2m-glove-words", filename="glove/our_vab_words.pkl", url=_GLOVE + "our_vab_words.pkl",
    size=67470, sha256="fac88da1be6f00d36b72b88c9745c8ac35a94a7bd6ccf1fa3bab380faf8c2e0d", licence="MIT")
GLOVE_INDEX = WeightFile(
    name="t2m-glove-index", filename="glove/our_vab_idx.pkl", url=_GLOVE + "our_vab_idx.pkl",
    size=79811, sha256="d85dce83d2c27a92bb94bb51dc1f55a04fcaa328c359d23eccf648e296c16493", licence="MIT")

WEIGHTS = {w.name: w for w in (T2M_CHECKPOINT, T2M_MEAN, T2M_STD, GLOVE_VECTORS, GLOVE_WORDS, GLOVE_INDEX)}


# ---------------------------------------------------------------- networks

class MovementConvEncoder(nn.Module):
    """(N, T, 259) normalised features -> (N, T // 4, 512) movements."""

    def __init__(self, input_size: int = DIM_POSE - FOOT_CONTACTS, hidden_size: int = 512, output_size: int = 512):
        super().__init__()
        # indices 0 and 3 hold the convolutions, as in the checkpoint (main.0.*, main.3.*)
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden_size, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1), nn.Dropout(0.2), nn.LeakyReLU(0.2),
        )
        self.out_net = nn.Linear(output_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_net(self.main(x.transpose(1, 2)).transpose(1, 2))


class _BiGRUCo(nn.Module):
    """Linear -> BiGRU from a learned initial state -> MLP on both directions' last states."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.LayerNorm(hidden_size),
                                        nn.LeakyReLU(0.2), nn.Linear(hidden_size, output_size))
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))

    def _encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.input_emb(x), lengths.to("cpu", torch.int64), batch_first=True,
                                      enforce_sorted=False)  # same numbers as the reference's sorted batches
        _, last = self.gru(packed, self.hidden.expand(-1, x.shape[0], -1).contiguous())
        return self.output_net(torch.cat([last[0], last[1]], dim=-1))


class MotionEncoderBiGRUCo(_BiGRUCo):
    """(N, T', 512) movements and (N,) movement counts -> (N, 512)."""

    def __init__(self, input_size: int = 512, hidden_size: int = 1024, output_size: int = EMBED_DIM):
        super().__init__(input_size, hidden_size, output_size)

    def forward(self, movements: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._encode(movements, lengths)


class TextEncoderBiGRUCo(_BiGRUCo):
    """(N, L, 300) word vectors, (N, L, 15) POS one-hots and (N,) token counts -> (N, 512)."""

    def __init__(self, word_size: int = WORD_DIM, pos_size: int = len(POS_TAGS), hidden_size: int = 512,
                 output_size: int = EMBED_DIM):
        super().__init__(word_size, hidden_size, output_size)
        self.pos_emb = nn.Linear(pos_size, word_size)

    def forward(self, words: torch.Tensor, pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._encode(words + self.pos_emb(pos), lengths)


# ---------------------------------------------------------------- word vectors

_PLAIN_BUILTINS = frozenset({"list", "dict", "str", "int"})


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what the opcodes build themselves plus builtins list/dict/str/int: no other callable."""

    def find_class(self, module, name):
        if module == "builtins" and name in _PLAIN_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only lists, dicts, str and int are read")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id: only lists, dicts, str and int are read")


def read_plain_pickle(path: str | Path):
    """A pickle of plain lists/dicts/str/int; DataError naming the file for anything else."""
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(f).load()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a hostile or broken pickle; nothing outside the allow-list ran
        raise DataError(f"{path} is not a plain word-list pickle ({type(exc).__name__}: {exc})") from None


def caption_tokens(line: str) -> list[str]:
    """``caption#word/POS word/POS ...#start#end`` (a HumanML3D texts line) -> its tokens."""
    parts = line.strip().split("#")
    if len(parts) < 2:
        raise DataError(f"expected 'caption#word/POS ...#start#end', got {line.strip()[:80]!r}")
    return parts[1].split()


class WordVectors:
    """GloVe vectors of the reference's vocabulary and its token -> (vector, POS one-hot) rules.

    A known word gets its vector and its tag (or its VIP category, see ``VIP_WORDS``); an
    unknown word gets the vector of ``unk`` and the tag OTHER; unknown tags are OTHER.
    """

    def __init__(self, vectors: np.ndarray, words: list[str], index: dict[str, int]):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != WORD_DIM:
            raise DataError(f"word vectors have shape {vectors.shape}, expected (words, {WORD_DIM})")
        if "unk" not in words:
            raise DataError("the word list has no 'unk', which unknown words map to")
        rows = {}
        for word in words:
            row = index.get(word)
            if not isinstance(row, int) or not 0 <= row < len(vectors):
                raise DataError(f"word {word!r} has index {row!r}, expected one of 0..{len(vectors) - 1}")
            rows[word] = row
        self.vectors = torch.as_tensor(vectors, dtype=torch.float32)
        self.rows = rows

    @classmethod
    def load(cls, vectors: str | Path, words: str | Path, index: str | Path) -> WordVectors:
        """From ``our_vab_data.npy`` (no pickles allowed), ``our_vab_words.pkl`` and ``our_vab_idx.pkl``."""
        try:
            array = np.load(vectors, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read word vectors {vectors}: {exc}") from None
        word_list, word_index = read_plain_pickle(words), read_plain_pickle(index)
        if not isinstance(word_list, list) or not all(isinstance(w, str) for w in word_list):
            raise DataError(f"{words} holds {type(word_list).__name__}, expected a list of words")
        if not isinstance(word_index, dict) or not all(isinstance(w, str) for w in word_index):
            raise DataError(f"{index} holds {type(word_index).__name__}, expected a dict word -> row")
        return cls(array, word_list, word_index)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, token: str) -> tuple[int, int]:
        """``word/POS`` -> (row of its vector, index of its POS one-hot)."""
        word, slash, tag = token.rpartition("/")
        if not slash:
            raise DataError(f"caption token {token!r} is not of the form word/POS")
        if word not in self.rows:
            return self.rows["unk"], POS_INDEX["OTHER"]
        return self.rows[word], POS_INDEX.get(_VIP_OF.get(word, tag), POS_INDEX["OTHER"])

    def encode(self, captions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token lists -> word vectors (N, 22, 300), POS one-hots (N, 22, 15), lengths (N,).

        As the reference: sos + at most 20 tokens + eos, padded with ``unk/OTHER`` to 22;
        the length counts sos and eos.
        """
        rows, tags, lengths = [], [], []
        for tokens in captions:
            if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
                raise DataError(f"a caption must be a list of 'word/POS' tokens, got {tokens!r:.80}")
            sequence = ["sos/OTHER", *list(tokens)[:MAX_TEXT_WORDS], "eos/OTHER"]
            lengths.append(len(sequence))
            sequence += ["unk/OTHER"] * (TEXT_TOKENS - len(sequence))
            looked = [self.lookup(t) for t in sequence]
            rows.append([r for r, _ in looked])
            tags.append([p for _, p in looked])
        words = self.vectors[torch.tensor(rows, dtype=torch.int64).reshape(-1, TEXT_TOKENS)]
        pos = nn.functional.one_hot(torch.tensor(tags, dtype=torch.int64).reshape(-1, TEXT_TOKENS),
                                    len(POS_TAGS)).float()
        return words, pos, torch.tensor(lengths, dtype=torch.int64)


# ---------------------------------------------------------------- the evaluator's networks

class T2MNetworks(nn.Module):
    """The three encoders, the evaluator's normalisation and (for captions) the word vectors."""

    def __init__(self, movement_encoder=None, motion_encoder=None, text_encoder=None,
                 mean=None, std=None, words: WordVectors | None = None):
        super().__init__()
        self.movement_encoder = movement_encoder or MovementConvEncoder()
        self.motion_encoder = motion_encoder or MotionEncoderBiGRUCo()
        self.text_encoder = text_encoder or TextEncoderBiGRUCo()
        mean = torch.zeros(DIM_POSE) if mean is None else torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        std = torch.ones(DIM_POSE) if std is None else torch.as_tensor(np.asarray(std), dtype=torch.float32)
        for what, value in (("mean", mean), ("std", std)):
            if value.shape != (DIM_POSE,) or not torch.isfinite(value).all():
                raise DataError(f"evaluator {what} has shape {tuple(value.shape)} or non-finite values, "
                                f"expected {DIM_POSE} finite numbers")
        if (std <= 0).any():
            raise DataError("evaluator std has entries <= 0")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.words = words
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, weight: WeightFile | None = None, **kwargs) -> T2MNetworks:
        """The encoders of a verified ``finest.tar`` (``load_checkpoint``); ``kwargs``: mean, std, words."""
        state = load_checkpoint(path, weight)
        networks = cls(**kwargs)
        for key in ("movement_encoder", "motion_encoder", "text_encoder"):
            try:
                getattr(networks, key).load_state_dict(state[key])
            except RuntimeError as exc:
                raise MissingWeightsError(f"{path}: '{key}' does not fit the evaluator ({exc})") from None
        networks.weights_path = Path(path)
        return networks.eval()

    @torch.no_grad()
    def motion_embeddings(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """RAW (N, T, 263) features and (N,) frame counts (>= 4) -> (N, 512)."""
        self.eval()
        device = self.mean.device
        features, lengths = torch.as_tensor(features), torch.as_tensor(lengths, dtype=torch.int64).cpu()
        if features.ndim != 3 or features.shape[2] != DIM_POSE or len(lengths) != len(features):
            raise DataError(f"expected features (N, T, {DIM_POSE}) and N lengths, got {tuple(features.shape)} "
                            f"and {len(lengths)}")
        if len(lengths) and (lengths.min() < UNIT_LENGTH or lengths.max() > features.shape[1]):
            raise DataError(f"motion lengths must lie in [{UNIT_LENGTH}, {features.shape[1]}] frames, got "
                            f"{int(lengths.min())}..{int(lengths.max())}")
        if not len(lengths):
            return torch.zeros(0, EMBED_DIM, device=device)
        units = lengths // UNIT_LENGTH
        frames = max(MAX_MOTION_LENGTH, int(units.max()) * UNIT_LENGTH)
        x = (features[:, :frames].to(device, torch.float32) - self.mean) / self.std
        x = nn.functional.pad(x, (0, 0, 0, frames - x.shape[1]))
        keep = torch.arange(frames)[None, :] < (units * UNIT_LENGTH)[:, None]
        x = torch.where(keep[..., None].to(device), x, 0.0)  # the reference's zero padding, normalised units
        movements = self.movement_encoder(x[..., :-FOOT_CONTACTS])
        return self.motion_encoder(movements, units)

    @torch.no_grad()
    def text_embeddings(self, captions) -> torch.Tensor:
        """Lists of ``word/POS`` tokens -> (N, 512)."""
        if self.words is None:
            raise DataError("these evaluator networks have no word vectors, so they cannot embed captions")
        self.eval()
        words, pos, lengths = self.words.encode(captions)
        device = self.mean.device
        return self.text_encoder(words.to(device), pos.to(device), lengths)


# ---------------------------------------------------------------- loading

def _with_hint(exc: MissingWeightsError, weight: WeightFile) -> MissingWeightsError:
    if weight.name != T2M_CHECKPOINT.name:
        return exc
    return MissingWeightsError(f"{exc}. finest.tar comes inside t2m.zip ({_EVALUATOR_ZIP}, fetched by MDM's "
                               f"prepare/download_t2m_evaluators.sh): unzip it and place its "
                               f"{T2M_CHECKPOINT.filename} under the weights folder")


def _resolve(weight: WeightFile, root: Path) -> Path:
    try:
        return resolve_weights(weight, root / weight.filename)
    except MissingWeightsError as exc:
        raise _with_hint(exc, weight) from None


def load_checkpoint(path: str | Path, weight: WeightFile | None = None) -> dict[str, dict]:
    """The three state dicts of a verified ``finest.tar`` (tensors only: ``weights_only=True``)."""
    weight = weight or T2M_CHECKPOINT
    try:
        path = resolve_weights(weight, path)
    except MissingWeightsError as exc:
        raise _with_hint(exc, weight) from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("text_mot_match/model/finest.tar") for name in archive.namelist()):
                raise MissingWeightsError(f"{path} is the evaluators' archive, not the checkpoint: unzip it and "
                                          f"use its {T2M_CHECKPOINT.filename}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only met something other than tensors, dicts and numbers
        raise MissingWeightsError(f"{path}: torch.load(weights_only=True) refused it, so it is not the published "
                                  f"tensors-only checkpoint ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - whatever else the file is, it is not the checkpoint
        raise MissingWeightsError(f"{path} is not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    keys = ("movement_encoder", "motion_encoder", "text_encoder")
    if not isinstance(state, dict) or any(not isinstance(state.get(k), dict) for k in keys):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise MissingWeightsError(f"{path} holds {found}, expected the state dicts {', '.join(keys)}")
    return {k: state[k] for k in keys}


def load_t2m(weights: str | Path | None = None, *, words: bool = True) -> T2MNetworks:
    """The verified published evaluator.

    ``weights``: None (the weights folder), a folder laid out like it (an MDM checkout after its
    prepare scripts has this layout: ``t2m/...``, ``glove/...``, ``dataset/t2m_*.npy``), or the
    ``finest.tar`` file itself (the other files then come from the weights folder).
    """
    root = weights_dir()
    checkpoint = None
    if weights is not None:
        weights = Path(weights)
        if weights.is_dir():
            root = weights
        else:
            checkpoint = weights
    checkpoint = checkpoint or _resolve(T2M_CHECKPOINT, root)
    stats = {}
    for weight in (T2M_MEAN, T2M_STD):
        path = _resolve(weight, root)
        try:
            stats[weight.name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
    vectors = None
    if words:
        vectors = WordVectors.load(*(_resolve(w, root) for w in (GLOVE_VECTORS, GLOVE_WORDS, GLOVE_INDEX)))
    return T2MNetworks.from_checkpoint(checkpoint, mean=stats["t2m-mean"], std=stats["t2m-std"], words=vectors)

