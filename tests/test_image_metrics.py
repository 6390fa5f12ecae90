"""FID / IS on known distributions, the FID Inception-v3 loader, and the domain classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagebm import metrics as M
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance_samples

# ---------------------------------------------------------------- FID on known Gaussians

MU1, S1 = np.array([0.0, 0.0, 0.0, 0.0]), np.array([1.0, 1.0, 2.0, 0.5])
MU2, S2 = np.array([1.0, 0.5, 0.0, 0.0]), np.array([1.0, 2.0, 1.0, 0.5])


def gaussian_extractor(mu: np.ndarray, s: np.ndarray):
    """Features N(mu, diag(s²)) from uniform pixels: the normal quantile, scaled and shifted."""
    mu_t, s_t = torch.tensor(mu, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
    return lambda x: (mu_t + s_t * torch.special.ndtri(x.double().flatten(1)), None)


def uniform_images(n: int, seed: int) -> torch.Tensor:
    u = torch.rand(n, 1, 1, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u.clamp(1e-6, 1 - 1e-6).float()


def test_fid_matches_closed_form_for_diagonal_gaussians():
    # For diagonal covariances FID = ‖μ1 − μ2‖² + Σ_i (s1_i − s2_i)² = 1.25 + 2 = 3.25.
    exact = np.sum((MU1 - MU2) ** 2) + np.sum((S1 - S2) ** 2)
    assert exact == pytest.approx(3.25)
    stats1 = M.feature_stats(uniform_images(20000, 0), gaussian_extractor(MU1, S1))
    stats2 = M.feature_stats(uniform_images(20000, 1), gaussian_extractor(MU2, S2))
    np.testing.assert_allclose(stats1[0], MU1, atol=0.05)
    np.testing.assert_allclose(np.diag(stats2[1]), S2**2, rtol=0.05)
    assert M.fid_from_stats(stats1, stats2) == pytest.approx(exact, abs=0.1)
    same = M.feature_stats(uniform_images(20000, 2), gaussian_extractor(MU1, S1))
    assert M.fid_from_stats(stats1, same) < 0.01


def test_fid_reference_as_images_stats_or_npz_agree(tmp_path):
    ext = gaussian_extractor(MU1, S1)
    samples, reference = uniform_images(500, 3), uniform_images(600, 4)
    direct = M.fid(samples, reference, ext, batch_size=128)
    features = [M.extract_features(a, ext) for a in (samples, reference)]
    assert direct == pytest.approx(frechet_distance_samples(*features), rel=1e-9)
    stats = M.feature_stats(reference, ext)
    path = M.save_stats(tmp_path / "ref.npz", stats)
    assert set(np.load(path).files) == {"mu", "sigma"}
    assert M.fid(samples, stats, ext) == pytest.approx(direct, rel=1e-9)
    assert M.fid(samples, path, ext) == pytest.approx(direct, rel=1e-9)
    with pytest.raises(UsageError, match="different feature sizes"):
        M.fid_from_stats(stats, (np.zeros(3), np.eye(3)))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(UsageError, match="mu and sigma"):
        M.load_stats(tmp_path / "bad.npz")


class SmallInception:
    """Stands in for InceptionFeatures (4-d pool features, 2 classes): a 2048-d sqrtm is slow."""

    batch_size = 64

    def __init__(self) -> None:
        self.features = gaussian_extractor(MU1, S1)

    def __call__(self, images):
        return self.features(images)[0].float(), None

    def class_probs(self, pool):
        return torch.softmax(torch.stack([pool[:, 0], -pool[:, 0]], 1).double(), 1)


def test_image_scores_combine_fid_and_inception_score():
    ext = SmallInception()
    samples, reference = uniform_images(400, 5), uniform_images(300, 6)
    scores = M.image_scores(samples, reference, ext, splits=4)
    assert scores["fid"] == pytest.approx(M.fid(samples, reference, ext), rel=1e-6)
    expected = M.inception_score(ext.class_probs(ext(samples)[0]).numpy(), splits=4)
    assert (scores["inception_score"], scores["inception_score_std"]) == pytest.approx(expected)


def test_images_must_lie_in_unit_interval():
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        M.as_images(torch.full((2, 3, 4, 4), 255.0))
    with pytest.raises(UsageError, match="N, C, H, W"):
        M.as_images(torch.zeros(3, 4, 4))
    assert M.as_images(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)).max() == 1.0


# ---------------------------------------------------------------- Inception score


def test_inception_score_of_known_predictions():
    k = 10
    confident = np.eye(k)[np.arange(1000) % k]
    mean, std = M.inception_score(confident, splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-9)
    identical = np.tile(np.full(k, 1.0 / k), (1000, 1))
    assert M.inception_score(identical) == pytest.approx((1.0, 0.0))
    # Two splits: one of confident predictions spread over 2 classes (IS 2), one all alike (IS 1).
    mixed = np.concatenate([np.eye(k)[np.arange(50) % 2], np.tile(np.eye(k)[0], (50, 1))])
    assert M.inception_score(mixed, splits=2) == pytest.approx((1.5, 0.5))
    with pytest.raises(UsageError, match="softmax"):
        M.inception_score(np.log(confident + 1e-3))
    with pytest.raises(UsageError, match="splits"):
        M.inception_score(confident[:5], splits=10)


# ---------------------------------------------------------------- FID Inception-v3


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = M.InceptionFeatures()
    path = tmp_path_factory.mktemp("inception") / M.INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return net, path


def test_inception_architecture_is_pytorch_fids():
    net = M.InceptionFeatures()
    # torchvision's inception_v3 has 27,161,264 parameters; less its auxiliary head (3,326,696)
    # and with pytorch-fid's 1008-way fc (+8·2049) that leaves 23,850,960.
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    keys = net.state_dict()
    assert keys["fc.weight"].shape == (1008, 2048)
    assert keys["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert "Mixed_5b.branch_pool.bn.running_var" in keys and "Conv2d_1a_3x3.conv.bias" not in keys
    assert not net.train().training


def test_load_inception_strictly_and_extract(inception_file):
    original, path = inception_file
    with pytest.warns(UserWarning, match=M.INCEPTION_SHA256_PREFIX):
        net = M.load_inception(path, batch_size=1)
    for key, value in original.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pool, logits = net(rgb)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool.dtype == torch.float32 and torch.isfinite(pool).all()
    gray = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    gray_pool, gray_logits = net(gray)
    assert gray_pool.shape == (1, 2048) and gray_logits.shape == (1, 1008)
    torch.testing.assert_close(gray_pool, net(gray.expand(-1, 3, -1, -1))[0])
    probs = net.class_probs(pool)
    assert probs.shape == (2, 1008)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(UsageError, match="channels"):
        net(torch.rand(1, 2, 8, 8))


def test_inception_path_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(M.INCEPTION_ENV, str(tmp_path / "w.pth"))
    assert M.inception_path() == tmp_path / "w.pth"
    assert M.inception_path(tmp_path) == tmp_path / M.INCEPTION_FILE
    monkeypatch.delenv(M.INCEPTION_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert M.inception_path() == tmp_path / ".cache" / "imagebm" / M.INCEPTION_FILE


def test_load_inception_errors_say_what_to_fetch(tmp_path):
    with pytest.raises(UsageError) as err:
        M.load_inception(tmp_path / "missing.pth")
    assert M.INCEPTION_URL in str(err.value) and M.INCEPTION_ENV in str(err.value)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not a readable PyTorch weight file"):
        M.load_inception(corrupt)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, wrong)
    with pytest.raises(UsageError, match="not pytorch-fid's FID Inception-v3 weights") as err:
        M.load_inception(wrong)
    assert M.INCEPTION_URL in str(err.value)


# ---------------------------------------------------------------- domain classifier on digits


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1200], perm[1200:]
    classifier = M.train_domain_classifier(x[train], y[train], 10, seed=0)
    return classifier, (x[train], y[train]), (x[test], y[test])


def test_domain_classifier_is_accurate(digits):
    classifier, _, (x, y) = digits
    with torch.no_grad():
        accuracy = (classifier(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95
    assert classifier.features(x[:5]).shape == (5, classifier.config.feature_dim)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_domain_scores_detect_noise_and_mode_collapse(digits):
    classifier, (x_train, y_train), (x_test, y_test) = digits
    test = M.domain_scores(x_test, x_train, classifier, reference_labels=y_train)
    noise = torch.rand(len(x_test), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = M.domain_scores(noise, x_train, classifier)
    collapsed = M.domain_scores(x_train[y_train == 3], x_train, classifier)
    assert test["accuracy_on_reference"] > 0.95 and noisy["accuracy_on_reference"] is None
    assert 5 * test["fid"] < noisy["fid"]
    assert 5 * test["fid"] < collapsed["fid"]
    assert test["inception_score"] > 8 and collapsed["inception_score"] < 1.5
    assert test["inception_score"] <= test["reference_inception_score"] + 0.5


def test_domain_classifier_round_trip(digits, tmp_path):
    classifier, _, (x, _) = digits
    path = classifier.save(tmp_path / "clf.pt")
    loaded = M.DomainClassifier.load(path)
    assert loaded.config == classifier.config
    with torch.no_grad():
        assert torch.equal(loaded.features(x), classifier.features(x))
    with pytest.raises(UsageError, match="takes"):
        loaded.features(torch.rand(2, 1, 16, 16))
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="other.pt: not a domain classifier file"):
        M.DomainClassifier.load(tmp_path / "other.pt")


def test_domain_classifier_training_is_seeded_and_checks_labels():
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 4
    state = torch.random.get_rng_state()
    a = M.train_domain_classifier(x, y, 4, steps=3, seed=5, batch_size=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = M.train_domain_classifier(x, y, 4, steps=3, seed=5, batch_size=8)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key
    with pytest.raises(UsageError, match="labels must lie"):
        M.train_domain_classifier(x, y + 1, 4, steps=1)
    with pytest.raises(UsageError, match="one label per image"):
        M.train_domain_classifier(x, y[:3], 4, steps=1)
