"""FID, sFID, Inception Score, precision and recall of image samples, as ADM reports them.

``layersync-eval --plugin image`` reads samples and reference with ``open_images``: an
ADM-format ``.npz`` (``arr_0``: uint8 NHWC; a reference batch may also hold precomputed
``mu``/``sigma``/``mu_s``/``sigma_s``, which then give FID/sFID), a preview's ``.npz``
(``samples``: float NCHW in [-1, 1]) or a folder of images, both at one resolution.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from layersync.errors import DataError
from layersync.interfaces import npz_samples_key
from layersync.metrics import GaussianStats, frechet_distance
from layersync_image.inception import RESIZE_MODE, SPATIAL_CHANNELS, load_inception
from layersync_image.output import to_uint8_nhwc

POOL_DIM, SPATIAL_DIM = 2048, SPATIAL_CHANNELS * 17 * 17
NPZ_LAYOUT = "an .npz whose arr_0 holds uint8 images (N, H, W, 3) (ADM's layout)"


# ---------------------------------------------------------------- metrics on features


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp_min_(0)


def knn_radii(features: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Squared distance from each row to its k-th nearest other row (ADM's manifold radii)."""
    return torch.cat([squared_distances(rows, features).kthvalue(k + 1, dim=1).values for rows in features.split(batch)])


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int) -> float:
    """Fraction of ``points`` inside at least one centre's ball (boundary included)."""
    inside = [(squared_distances(rows, centres) <= radii).any(1) for rows in points.split(batch)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch: int = 10000) -> tuple[float, float]:
    """Kynkäänniemi et al.: precision = fakes within the real k-NN manifold, recall the other way round."""
    real, fake = real.float(), fake.float()
    precision = coverage(fake, real, knn_radii(real, k, batch), batch)
    recall = coverage(real, fake, knn_radii(fake, k, batch), batch)
    return precision, recall


def inception_score(logits: torch.Tensor, splits: int = 10) -> float:
    """exp E[KL(p(y|x) || p(y))] per split (in order, no shuffle), averaged over the splits."""
    log_p = logits.double().log_softmax(1)
    n = len(log_p)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = part.exp().mean(0).log()
        scores.append((part.exp() * (part - log_marginal)).sum(1).mean().exp().item())
    return float(np.mean(scores))


# ---------------------------------------------------------------- the evaluator


def as_uint8_nchw(images) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, C, H, W) with C in {1, 3}, array or tensor -> uint8 (N, 3, H, W)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise DataError(f"images must be uint8 (N, H, W, C) or (N, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        if x.shape[3] not in (1, 3):
            raise DataError(f"images of shape {tuple(x.shape)} have no channel axis of size 1 or 3")
        x = x.permute(0, 3, 1, 2)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, t)
        return torch.cat(parts)
    return t


class _Side:
    """What the evaluator keeps of one image set (samples or reference)."""

    def __init__(self):
        self.pool = self.spatial = None
        self.features, self.logits = [], []

    def add(self, pool, spatial, logits):
        if self.pool is None:
            self.pool, self.spatial = GaussianStats(pool.shape[1]), GaussianStats(spatial.shape[1])
        self.pool.update(pool)
        self.spatial.update(spatial)
        self.features.append(pool.cpu())
        self.logits.append(logits.cpu())

    @property
    def count(self) -> int:
        return 0 if self.pool is None else self.pool.count


class ImageEvaluator:
    """Streams images through the FID Inception and computes ADM's suite of numbers.

    ``network`` maps uint8 NCHW to ``(pool, spatial, logits)``; by default the
    verified published Inception (``weights``: an explicit file, else the
    weights folder). Gaussian statistics are float64 sums that merge across
    ranks; pool features (precision/recall) and logits (IS) are kept.
    """

    def __init__(self, network=None, *, weights=None, batch: int = 50, device="cpu", k: int = 3, splits: int = 10,
                 distance_batch: int = 10000):
        self.device = torch.device(device)
        self.network = (network if network is not None else load_inception(weights)).to(self.device).eval()
        self.batch, self.k, self.splits, self.distance_batch = batch, k, splits, distance_batch
        self.sides = {False: _Side(), True: _Side()}
        self.reference = {}

    @property
    def weights_path(self):
        return self.network.weights_path

    def use_reference_statistics(self, stats: dict) -> None:
        """Precomputed reference Gaussians (an ADM reference batch's ``mu``, ``sigma``, ``mu_s``,
        ``sigma_s``) replace those of the real images."""
        for name, (mu, sigma) in {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}.items():
            if mu in stats:
                self.reference[name] = (np.asarray(stats[mu], np.float64), np.asarray(stats[sigma], np.float64))

    def reference_statistics(self) -> dict:
        """The real images' Gaussians under ADM's names, to store beside (or instead of) a reference batch."""
        real = self.sides[True]
        if real.count < 2:
            raise DataError(f"reference statistics need at least 2 reference images, got {real.count}")
        pool, spatial = real.pool.summed(), real.spatial.summed()
        return {"mu": pool.mean, "sigma": pool.cov, "mu_s": spatial.mean, "sigma_s": spatial.cov}

    @torch.no_grad()
    def update(self, images, real: bool = False) -> None:
        side = self.sides[bool(real)]
        for chunk in as_uint8_nchw(images).split(self.batch):
            side.add(*self.network(chunk.to(self.device)))

    def _reference_gaussian(self, name: str, stats: GaussianStats):
        return self.reference.get(name) or (stats.mean, stats.cov)

    def compute(self) -> dict:
        fake, real = self.sides[False], self.sides[True]
        if fake.count == 0 or real.count == 0:
            raise DataError(f"need both samples and reference images, got {fake.count} samples and {real.count} reference")
        fake_pool, fake_spatial = fake.pool.summed(), fake.spatial.summed()
        real_pool, real_spatial = real.pool.summed(), real.spatial.summed()
        n, n_ref = fake_pool.count, real_pool.count
        if n < max(self.splits, self.k + 1) or n_ref < self.k + 1:
            raise DataError(f"{n} samples and {n_ref} reference images are too few: the Inception Score needs "
                            f"at least {self.splits} samples, the k-NN manifolds at least {self.k + 1} images each")
        fake_features = _gather_rows(torch.cat(fake.features)).to(self.device)
        real_features = _gather_rows(torch.cat(real.features)).to(self.device)
        precision, recall = precision_recall(real_features, fake_features, self.k, self.distance_batch)
        return {
            "fid": frechet_distance(fake_pool.mean, fake_pool.cov, *self._reference_gaussian("pool", real_pool)),
            "sfid": frechet_distance(fake_spatial.mean, fake_spatial.cov, *self._reference_gaussian("spatial", real_spatial)),
            "inception_score": inception_score(_gather_rows(torch.cat(fake.logits)), self.splits),
            "precision": precision,
            "recall": recall,
            "num_samples": n,
            "num_ref": n_ref,
            "resize": RESIZE_MODE,
            "reference_statistics": ", ".join(sorted(self.reference)) + " precomputed" if self.reference else "computed",
        }


# ---------------------------------------------------------------- input files


def same_resolution(samples, reference) -> None:
    if samples.shape[1:3] != reference.shape[1:3]:
        raise DataError(f"reference {reference.path} holds {reference.shape[2]}x{reference.shape[1]} images, the samples "
                        f"{samples.path} {samples.shape[2]}x{samples.shape[1]}: expected the same resolution")


class NpzImages:
    """``arr_0`` of an ADM-format .npz, read in batches straight from the archive (50K images need not fit in RAM)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} does not exist (expected {NPZ_LAYOUT})")
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = [n.removesuffix(".npy") for n in archive.namelist()]
                header = None
                if "arr_0" in names:
                    with archive.open("arr_0.npy") as f:
                        header = self._header(f)
        except (zipfile.BadZipFile, ValueError) as exc:
            raise DataError(f"{self.path} is not a readable .npz ({exc}); expected {NPZ_LAYOUT}") from None
        if header is None:
            raise DataError(f"{self.path} has no arr_0 (it holds {', '.join(names) or 'nothing'}); expected {NPZ_LAYOUT}")
        self.shape, self.fortran, dtype = header
        if dtype != np.uint8 or len(self.shape) != 4 or self.shape[3] not in (1, 3):
            raise DataError(f"{self.path}: arr_0 is {dtype} of shape {self.shape}; "
                            "expected uint8 (N, H, W, 3) or (N, H, W, 1) (ADM's NHWC layout)")
        self.names = names

    @staticmethod
    def _header(f):
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy format version {version}")
        return read(f)

    def __len__(self):
        return self.shape[0]

    def batches(self, size: int):
        if self.fortran:
            images = np.load(self.path)["arr_0"]
            yield from (images[i : i + size] for i in range(0, len(images), size))
            return
        row_bytes = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open("arr_0.npy") as f:
            self._header(f)
            for start in range(0, len(self), size):
                rows = min(size, len(self) - start)
                data = bytearray(f.read(rows * row_bytes))
                if len(data) != rows * row_bytes:
                    raise DataError(f"{self.path}: arr_0 ends after {start} of {len(self)} images (truncated file)")
                yield np.frombuffer(data, np.uint8).reshape(rows, *self.shape[1:])

    def statistics(self) -> dict:
        """Precomputed reference Gaussians stored next to arr_0 (ADM reference batches), checked."""
        expected = {"mu": (POOL_DIM,), "sigma": (POOL_DIM, POOL_DIM),
                    "mu_s": (SPATIAL_DIM,), "sigma_s": (SPATIAL_DIM, SPATIAL_DIM)}
        present = [key for key in expected if key in self.names]
        if not present:
            return {}
        with np.load(self.path) as archive:
            found = {key: archive[key] for key in present}
        for pair in (("mu", "sigma"), ("mu_s", "sigma_s")):
            if (pair[0] in found) != (pair[1] in found):
                raise DataError(f"{self.path} holds only one of {pair[0]}/{pair[1]}; expected both or neither")
        for key, value in found.items():
            if value.shape != expected[key]:
                raise DataError(f"{self.path}: {key} has shape {value.shape}, expected {expected[key]} for the FID Inception")
        return found

    check_reference = same_resolution


class FolderImages:
    """Image files under a folder (searched recursively, sorted), all of one size."""

    def __init__(self, path: str | Path):
        from torchvision.datasets.folder import IMG_EXTENSIONS  # torchvision only when reading a folder

        self.path = Path(path)
        self.files = sorted(f for f in self.path.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
        if not self.files:
            raise DataError(f"folder {self.path} holds no image files ({', '.join(IMG_EXTENSIONS)})")
        first = self._read(self.files[0])
        self.shape = (len(self.files), *first.shape)

    def _read(self, file: Path) -> np.ndarray:
        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except Exception as exc:
            raise DataError(f"cannot read image {file}: {exc}") from None

    def __len__(self):
        return len(self.files)

    def batches(self, size: int):
        for start in range(0, len(self), size):
            images = [self._read(f) for f in self.files[start : start + size]]
            for file, image in zip(self.files[start : start + size], images):
                if image.shape != self.shape[1:]:
                    raise DataError(f"image {file} is {image.shape[1]}x{image.shape[0]}, expected "
                                    f"{self.shape[2]}x{self.shape[1]} like {self.files[0]}")
            yield np.stack(images)

    def statistics(self) -> dict:
        return {}

    check_reference = same_resolution


class PreviewImages:
    """``samples`` of a preview's .npz (``layersync-sample --out STEM``): float (N, C, H, W) in [-1, 1], as
    decoded, made uint8 NHWC as a sample set's ``arr_0`` holds them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with np.load(self.path) as archive:
            x = archive["samples"]
        if x.dtype.kind != "f" or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"{self.path}: samples is {x.dtype} of shape {x.shape}; expected a preview's float "
                            "images (N, C, H, W) in [-1, 1], C 1 or 3")
        self.images = to_uint8_nhwc(torch.from_numpy(x))
        self.shape = self.images.shape

    def __len__(self):
        return len(self.images)

    def batches(self, size: int):
        yield from (self.images[i : i + size] for i in range(0, len(self), size))

    def statistics(self) -> dict:
        return {}

    check_reference = same_resolution


def open_images(path: str | Path):
    """The ``read_samples`` of the image modality: a folder of images, an ADM-format .npz or a preview's .npz."""
    if Path(path).is_dir():
        return FolderImages(path)
    return PreviewImages(path) if npz_samples_key(path) == "samples" else NpzImages(path)
