import numpy as np
import pytest
import torch
from scipy import linalg
from tiny_metric_models import CountingExtractor, random_images, save_inception, tiny_open_clip

from benchmark.metrics import MetricContext, MetricUnavailable, SetMetric, get_metric
from benchmark.domains import Domain, PaperRecipe, register_domain, unregister_domain
from benchmark.metrics.fid import (FeatureStats, Fid, FidInstrument, InceptionFeatures, OpenClipFeatures,
                                   fid_of_features, frechet_distance)


def spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def closed_form(mu1, s1, mu2, s2):
    """By hand: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), scipy's matrix square root."""
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def save_folder(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")
    return folder


def records(n, method="m", category="c"):
    return [{"method": method, "prompt_id": "p", "seed": i, "category": category} for i in range(n)]


def test_diagonal_covariances_against_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))  # sqrt is elementwise here
    assert expected == pytest.approx(1 + 2.25 + (1 + 9 - 6) + (4 + 1 - 4) + 0)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-10)


def test_full_covariances_against_scipy_and_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(0)
    mu1, mu2, s1, s2 = rng.normal(size=5), rng.normal(size=5), spd(rng, 5), spd(rng, 5)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert value == pytest.approx(closed_form(mu1, s1, mu2, s2), rel=1e-8)
    tm = _compute_fid(*(torch.tensor(x, dtype=torch.float64) for x in (mu1, s1, mu2, s2)))
    assert value == pytest.approx(float(tm), rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("n", [4, 12], ids=["fewer_images_than_dims", "more_images_than_dims"])
def test_fid_of_features_is_the_closed_form_of_their_statistics(n):
    rng = np.random.default_rng(n)
    features = rng.normal(size=(n, 8)) * rng.uniform(0.5, 2, size=8)
    reference = FeatureStats(rng.normal(size=8), spd(rng, 8, rank=5), 6)
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)  # unbiased, by hand
    assert fid_of_features(features, reference) == pytest.approx(
        closed_form(mu, sigma, reference.mu, reference.sigma), rel=1e-6)


def test_fid_of_two_identical_sets_is_zero():
    # square roots of eigenvalues that are zero up to rounding: about 1e-7 against a trace of about 30
    features = np.random.default_rng(0).normal(size=(5, 32))  # low rank: 5 images, 32 dimensions
    assert fid_of_features(features, FeatureStats.of(features)) == pytest.approx(0, abs=1e-6)
    many = np.random.default_rng(1).normal(size=(40, 6))
    assert fid_of_features(many, FeatureStats.of(many)) == pytest.approx(0, abs=1e-6)


def test_fid_metric_of_the_reference_images_themselves_is_zero(tmp_path):
    images = random_images(6, seed=3)
    metric = Fid(extractor=CountingExtractor(), cache_dir=tmp_path / "cache")
    metric.setup(MetricContext(model_paths={"fid.reference": str(save_folder(tmp_path / "ref", images))}))
    assert isinstance(metric, SetMetric) and metric.columns == {"fid": False}
    metric.update(images[:3], records(3))
    metric.update(images[3:], records(3, method="n"))
    assert metric.compute(list(metric.states.values()))["fid"] == pytest.approx(0, abs=1e-6)
    assert metric.compute(list(metric.states.values())[:3])["fid"] > 0.01
    assert np.isnan(metric.compute(list(metric.states.values())[:1])["fid"])  # one image: no covariance


def test_reference_statistics_are_cached_and_reused(tmp_path):
    folder = save_folder(tmp_path / "ref", random_images(5, seed=4))
    context = MetricContext(model_paths={"fid.reference": str(folder), "fid.cache": str(tmp_path / "cache")})
    first = Fid(extractor=CountingExtractor())
    first.setup(context)
    assert first.extractor.calls == 5
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob(".*tmp"))  # written whole, then renamed
    again = Fid(extractor=CountingExtractor())
    again.setup(context)
    assert again.extractor.calls == 0  # the cached statistics, not the extractor
    assert np.array_equal(again.reference_stats.sigma, first.reference_stats.sigma)
    assert again.describe()["reference"] == first.describe()["reference"]
    assert again.describe()["reference"]["images"] == 5
    random_images(1, seed=9)[0].save(folder / "new.png")  # other content: other statistics
    changed = Fid(extractor=CountingExtractor())
    changed.setup(context)
    assert changed.extractor.calls == 6 and len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_a_statistics_file_as_reference(tmp_path):
    folder = save_folder(tmp_path / "ref", random_images(4, seed=5))
    context = MetricContext(model_paths={"fid.reference": str(folder), "fid.cache": str(tmp_path / "cache")})
    Fid(extractor=CountingExtractor()).setup(context)
    npz = next((tmp_path / "cache").glob("*.npz"))
    metric = Fid(extractor=CountingExtractor(), reference=npz)
    metric.setup(MetricContext())
    assert metric.extractor.calls == 0 and metric.reference_stats.n == 4
    other = CountingExtractor()
    other.name = "another network"
    with pytest.raises(MetricUnavailable, match="were computed with test projection"):
        Fid(extractor=other, reference=npz).setup(MetricContext())
    plain = tmp_path / "clean_fid_style.npz"  # mu and sigma only, as clean-fid writes them
    np.savez(plain, mu=np.zeros(6), sigma=np.eye(6))
    metric = Fid(extractor=CountingExtractor(), reference=plain)
    metric.setup(MetricContext())
    assert metric.describe()["reference"]["extractor"] == "not stated in the file"


@pytest.mark.parametrize("case", ["missing", "empty folder", "not npz", "garbage npz", "none given"])
def test_bad_reference_is_a_clear_error(tmp_path, case):
    path = {"missing": tmp_path / "nowhere", "empty folder": tmp_path / "empty", "not npz": tmp_path / "x.txt",
            "garbage npz": tmp_path / "x.npz", "none given": None}[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("hello")
    (tmp_path / "x.npz").write_bytes(b"\x00" * 10)
    paths = {"fid.cache": str(tmp_path / "cache")} | ({"fid.reference": str(path)} if path else {})
    with pytest.raises(MetricUnavailable) as err:
        Fid(extractor=CountingExtractor()).setup(MetricContext(model_paths=paths))
    message = str(err.value)
    assert "fid.reference=" in message and "\n" not in message
    if path is not None:
        assert str(path) in message


def test_missing_inception_weights_say_how_to_provide_them(tmp_path):
    with pytest.raises(MetricUnavailable, match="--metric-model fid=FILE") as err:
        get_metric("fid").setup(MetricContext(model_paths={"fid": str(tmp_path / "inception.pth"),
                                                           "fid.reference": str(tmp_path / "ref")}))
    assert "fid.reference=DIR" in str(err.value)  # both problems, on one line


def test_default_inception_extractor_matches_torchmetrics_fid(tmp_path):
    """Our FID with torchmetrics' Inception (random weights in torch-fidelity's format) equals torchmetrics'
    FrechetInceptionDistance on the same uint8 images: same features, resize and statistics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    weights = save_inception(tmp_path / "inception.pth")
    real, fake = random_images(4, (48, 48), seed=6), random_images(3, (48, 48), seed=7)
    metric = get_metric("fid")
    metric.setup(MetricContext(model_paths={"fid": str(weights), "fid.cache": str(tmp_path / "cache"),
                                            "fid.reference": str(save_folder(tmp_path / "ref", real))}))
    assert isinstance(metric.extractor, InceptionFeatures) and "299x299" in metric.convention
    assert "4 images" in metric.convention and "torchmetrics" in metric.describe()["library"]
    metric.update(fake, records(3))
    ours = metric.compute(list(metric.states.values()))["fid"]

    def uint8(images):
        return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])

    reference = FrechetInceptionDistance(feature=metric.extractor.model)
    reference.update(uint8(real), real=True)
    reference.update(uint8(fake), real=False)
    assert ours == pytest.approx(float(reference.compute()), rel=1e-3)
    assert ours > 0


def test_a_domain_plugs_its_own_extractor_and_reference(tmp_path):
    model, _, preprocess = tiny_open_clip()
    folder = save_folder(tmp_path / "renders", random_images(4, (32, 32), seed=8))
    instrument = FidInstrument(extractor=lambda context: OpenClipFeatures(model, preprocess, "tiny tower"),
                               reference=lambda context: folder)
    register_domain(Domain(name="test-world", title="", suites_dir=tmp_path, run_defaults={}, release_sampling=False,
                           paper=PaperRecipe(main_suite=""), instruments={"fid": lambda context: instrument}))
    try:
        metric = get_metric("fid")
        metric.setup(MetricContext(domain="test-world", model_paths={"fid.cache": str(tmp_path / "cache")}))
    finally:
        unregister_domain("test-world")
    assert metric.describe()["extractor"] == "tiny tower" and "tiny tower" in metric.convention
    assert metric.reference_stats.mu.shape == (16,)
    metric.update(random_images(3, (32, 32), seed=8), records(3))
    assert metric.compute(list(metric.states.values()))["fid"] >= 0
