"""FID: the Fréchet distance between the feature statistics of generated images and of a reference set.

A set-level metric (`SetMetric`): one value per method and suite category, and per method over all of its
images. Lower is better. A number without its convention is worthless, so the convention goes into
`results.json` and `summary.md`:

- library: torchmetrics' `NoTrainInceptionV3` (torch-fidelity's port of the TF FID Inception, pool3, 2048-d),
  weights from `--metric-model fid=FILE.pth` (torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`);
- resize: the 8-bit image, bilinear with antialias, from its own size to 299x299 (torchmetrics >= 1.8's
  default). Not clean-fid's (the paper's library; PIL bicubic): our numbers compare with torchmetrics', not
  with the paper's;
- statistics: mean and unbiased (n - 1) covariance of the features; the distance in float64;
- reference: `--metric-model fid.reference=DIR` (a folder of real images, its statistics computed once and
  cached under `~/.cache/sae/fid` or `--metric-model fid.cache=DIR`, keyed by the folder's content and the
  extractor) or `=FILE.npz` (`mu`, `sigma`, optionally `n` and `convention`);
- counts: reference images in the convention, generated images per group in the `images` column. FID is
  biased upward below about 2,048 images: compare only numbers made with the same counts.

The feature extractor is pluggable: any object with a `name` (the network and its weights; part of the cache
key and of the convention), optionally a `resize` and a `library` (stated in the convention), and
`features(images) -> (N, D) tensor`. A domain plugs its own in as a `FidInstrument` (the shapes world:
a small CLIP image tower and its own reference renders); `OpenClipFeatures` wraps any open_clip model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from sae.files import atomic_path

from .base import MetricContext, MetricUnavailable, SetMetric
from ..records import file_sha256

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
DEFAULT_CACHE = Path.home() / ".cache" / "sae" / "fid"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
BATCH = 32


# --- the distance ---------------------------------------------------------------------------------------------

def _f64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64).cpu()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """`|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))` in float64.

    `Tr sqrt(S1 S2)` is the sum of the square roots of the eigenvalues of `S1 S2` (real and non-negative for
    covariances), as torchmetrics' `_compute_fid` computes it (no matrix square root needed).
    """
    mu1, sigma1, mu2, sigma2 = map(_f64, (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dimensions differ: {tuple(mu1.shape)} against {tuple(mu2.shape)}")
    trace_sqrt = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


@dataclass
class FeatureStats:
    """Mean and unbiased covariance of n feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features) -> FeatureStats:
        x = _f64(features)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need at least two feature vectors, got shape {tuple(x.shape)}")
        return cls(x.mean(0).numpy(), torch.cov(x.T).reshape(x.shape[1], x.shape[1]).numpy(), len(x))

    def save(self, path: Path, convention: dict) -> None:
        """Atomic: a reader sees the whole file or none."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file per process: ranks may write the same reference's statistics at once
        with atomic_path(path, unique=True) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma, n=np.array(self.n),
                     convention=np.array(json.dumps(convention)))

    @classmethod
    def load(cls, path: Path) -> tuple[FeatureStats, dict]:
        try:
            with np.load(path, allow_pickle=False) as data:
                mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
                n = int(data["n"]) if "n" in data else 0
                convention = json.loads(str(data["convention"])) if "convention" in data else {}
        except (OSError, ValueError, KeyError) as err:
            raise MetricUnavailable(f"FID reference {str(path)!r} is not a statistics file (an .npz with mu and "
                                    f"sigma: {err}); pass --metric-model fid.reference=DIR|FILE.npz") from err
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise MetricUnavailable(f"FID reference {str(path)!r}: mu {mu.shape} and sigma {sigma.shape} do not fit")
        return cls(mu, sigma, n), convention


def fid_of_features(features, reference: FeatureStats) -> float:
    """FID of a set of feature vectors against reference statistics.

    With fewer vectors than dimensions (n < D, the usual case per category) the exact value comes from an
    n x n matrix: with `A` the centred features over sqrt(n - 1) (so `S = A^T A`), `S_ref S` has the same
    non-zero eigenvalues as the symmetric `A S_ref A^T`, whose `eigvalsh` is cheap and stable.
    """
    x = _f64(features)
    if len(x) < 2:
        return float("nan")
    n, d = x.shape
    if d != len(reference.mu):
        raise ValueError(f"features have {d} dimensions, the reference statistics {len(reference.mu)}")
    if n > d:
        stats = FeatureStats.of(x)
        return frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    mu, mu_ref, sigma_ref = x.mean(0), _f64(reference.mu), _f64(reference.sigma)
    a = (x - mu) / (n - 1) ** 0.5
    trace_sqrt = torch.linalg.eigvalsh(a @ sigma_ref @ a.T).clamp(min=0).sqrt().sum()
    return float((mu - mu_ref).square().sum() + a.square().sum() + sigma_ref.trace() - 2 * trace_sqrt)


# --- feature extractors ---------------------------------------------------------------------------------------

class InceptionFeatures:
    """torchmetrics' FID Inception (torch-fidelity's weights), pool3 features, on uint8 images of any size."""

    resize = "bilinear with antialias from the image's own size to 299x299 (torchmetrics >= 1.8 default)"

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        import torch_fidelity
        import torchmetrics
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.model = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                        feature_extractor_weights_path=weights, antialias=True).to(device)
        self.device = device
        stated = f"sha256 {file_sha256(Path(weights))[:12]}" if weights else Path(INCEPTION_URL).name
        self.name = f"FID Inception-v3 pool3 2048-d ({stated})"
        self.library = f"torchmetrics {torchmetrics.__version__} NoTrainInceptionV3, torch-fidelity " \
                       f"{torch_fidelity.__version__}"

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        out: list = [None] * len(images)
        by_size: dict = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.size, []).append(i)
        for indices in by_size.values():  # one forward per image size in the batch
            batch = torch.stack([torch.from_numpy(np.array(images[i].convert("RGB"))).permute(2, 0, 1)
                                 for i in indices]).to(self.device)
            for i, row in zip(indices, self.model(batch).float().cpu(), strict=True):
                out[i] = row
        return torch.stack(out)


class OpenClipFeatures:
    """Any open_clip model's image tower as an FID feature extractor (raw image embeddings)."""

    resize = "open_clip's preprocess (resize of the shorter side and centre crop to the tower's size)"
    library = "open_clip"

    def __init__(self, model, preprocess, name: str, device: str = "cpu"):
        self.model, self.preprocess, self.name, self.device = model.eval(), preprocess, name, device

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        return self.model.encode_image(batch).float().cpu()


def inception_extractor(context: MetricContext) -> InceptionFeatures:
    """The default: weights from `--metric-model fid=FILE`, else torch-fidelity's file from torch's cache (or
    downloaded when online)."""
    weights = context.model_paths.get("fid")
    remedy = (f"download {INCEPTION_URL} where there is network and pass --metric-model fid=FILE")
    if weights is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(INCEPTION_URL).name
        if cached.is_file():
            weights = str(cached)
        elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            raise MetricUnavailable(f"no FID Inception weights (offline); {remedy}")
    elif not Path(weights).is_file():
        raise MetricUnavailable(f"no FID Inception weights at {weights!r}; {remedy}")
    try:
        return InceptionFeatures(weights, device=context.device)
    except ModuleNotFoundError as err:
        raise MetricUnavailable(f"FID needs torchmetrics[image] (torch-fidelity): pip install "
                                f"'torchmetrics[image]' ({err})") from err
    except Exception as err:  # download, file and format errors
        raise MetricUnavailable(f"cannot load the FID Inception weights {weights!r} ({type(err).__name__}); "
                                f"{remedy}") from err


@dataclass
class FidInstrument:
    """A domain's own FID instrument (its `Domain.instruments["fid"]`): a feature extractor, and its reference
    set unless the user gives one."""

    extractor: Callable[[MetricContext], object]
    reference: Callable[[MetricContext], str | Path] | None = None


# --- reference statistics -------------------------------------------------------------------------------------

def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_digest(folder: Path, files: list[Path]) -> str:
    """The folder's content: every image's relative path and bytes."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def extract(extractor, images, batch_size: int = BATCH) -> torch.Tensor:
    return torch.cat([extractor.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def extractor_convention(extractor) -> dict:
    return {"extractor": extractor.name, "resize": getattr(extractor, "resize", "not stated"),
            "library": getattr(extractor, "library", "not stated")}


def reference_stats(source: str | Path, extractor, cache_dir: Path) -> tuple[FeatureStats, dict]:
    """Statistics of a reference folder (computed once, cached, reused) or of an .npz file, and their convention."""
    from PIL import Image

    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        stats, convention = FeatureStats.load(source)
        stated = convention.get("extractor")
        if stated is not None and stated != extractor.name:
            raise MetricUnavailable(f"FID reference statistics {str(source)!r} were computed with {stated}, this run "
                                    f"extracts {extractor.name}: pass the reference folder instead")
        return stats, {"source": str(source), "images": stats.n or "not stated",
                       "extractor": stated or "not stated in the file"}
    if not source.is_dir():
        raise MetricUnavailable(f"FID reference {str(source)!r} is neither a folder of images nor an .npz statistics "
                                "file; pass --metric-model fid.reference=DIR (real images) or FILE.npz")
    files = image_files(source)
    if len(files) < 2:
        raise MetricUnavailable(f"FID reference folder {str(source)!r} holds {len(files)} images (need at least 2); "
                                "pass --metric-model fid.reference=DIR with the real images")
    convention = {"source": str(source.resolve()), "images": len(files), "digest": folder_digest(source, files),
                  **extractor_convention(extractor)}
    key = hashlib.sha256(json.dumps([convention["digest"], convention["extractor"], convention["resize"]])
                         .encode()).hexdigest()[:20]
    cached = Path(cache_dir) / f"{source.name or 'reference'}-{key}.npz"
    if cached.is_file():
        stats, saved = FeatureStats.load(cached)
        return stats, {**saved, "source": convention["source"], "cache": str(cached)}
    features = []
    for start in range(0, len(files), BATCH):
        images = [Image.open(p).convert("RGB") for p in files[start:start + BATCH]]
        features.append(extractor.features(images))
    stats = FeatureStats.of(torch.cat(features))
    stats.save(cached, convention)
    return stats, {**convention, "cache": str(cached)}


# --- the metric -----------------------------------------------------------------------------------------------

class Fid(SetMetric):
    name = "fid"
    description = ("FID against a reference set (torchmetrics' Inception unless the domain plugs its own), per "
                   "method x category")
    columns = {"fid": False}
    convention = ("Fréchet distance between feature statistics (mean, unbiased covariance; float64) of each "
                  "method x category's images and of a reference set; default features: torchmetrics' FID "
                  "Inception pool3, bilinear antialiased resize to 299")

    def __init__(self, extractor=None, reference: str | Path | None = None, cache_dir: str | Path | None = None):
        self.extractor, self.reference, self.cache_dir = extractor, reference, cache_dir
        self.reference_stats: FeatureStats | None = None
        self.reference_info: dict = {}

    def setup(self, context) -> None:
        from .base import domain_model

        factory = domain_model(self.name, context)
        domain = factory(context) if factory is not None else None
        reference = self.reference or context.model_paths.get("fid.reference")
        if reference is None and domain is not None and domain.reference is not None:
            reference = domain.reference(context)
        problems = []
        if reference is None:
            problems.append("FID needs a reference set: pass --metric-model fid.reference=DIR (a folder of real "
                            "images) or FILE.npz (mu, sigma)")
        elif not Path(reference).exists():
            problems.append(f"FID reference {str(reference)!r} does not exist; pass --metric-model "
                            "fid.reference=DIR (a folder of real images) or FILE.npz (mu, sigma)")
        if self.extractor is None:
            try:
                self.extractor = domain.extractor(context) if domain is not None else inception_extractor(context)
            except MetricUnavailable as err:
                problems.append(str(err))
        if problems:
            raise MetricUnavailable("; ".join(problems))
        cache = Path(self.cache_dir or context.model_paths.get("fid.cache") or DEFAULT_CACHE)
        self.reference_stats, self.reference_info = reference_stats(reference, self.extractor, cache)
        self.convention = (
            f"Fréchet distance (mean, unbiased covariance, float64) between {self.extractor.name} features of "
            f"each method x category's images (count: the images column) and of the reference "
            f"{self.reference_info['source']} ({self.reference_info['images']} images); library "
            f"{getattr(self.extractor, 'library', 'not stated')}; resize "
            f"{getattr(self.extractor, 'resize', 'not stated')}; biased upward below about 2,048 images")

    def describe(self) -> dict:
        reference = {k: v for k, v in self.reference_info.items() if k != "cache"}  # same run, same description
        return {**super().describe(), "reference": reference,
                **(extractor_convention(self.extractor) if self.extractor is not None else {})}

    def embed(self, images, records) -> list:
        if self.reference_stats is None:
            raise MetricUnavailable("fid metric used before setup()")
        return list(self.extractor.features([image.convert("RGB") for image in images]).numpy())

    def compute(self, states: list) -> dict[str, float]:
        if len(states) < 2:
            return {"fid": float("nan")}
        return {"fid": fid_of_features(np.stack(states), self.reference_stats)}
