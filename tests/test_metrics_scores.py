"""FID, KID and IS maths on features and logits whose answer is known (no Inception run)."""

import warnings

import numpy as np
import pytest

from sagan_plugin.compat import ensure_host_importable
from sagan_plugin.metrics import scores
from sagan_plugin.metrics.scores import (
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    statistics,
)


def test_inception_score_of_uniform_predictions_is_one():
    assert inception_score(np.zeros((40, 1008)), splits=4) == pytest.approx((1.0, 0.0), abs=1e-12)
    # more splits than images: one image per split, still defined
    assert inception_score(np.zeros((3, 1008)), splits=10) == pytest.approx((1.0, 0.0), abs=1e-12)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_inception_score_of_confident_predictions_on_k_equally_used_classes_is_k(k):
    labels = np.arange(40 * k) % k
    logits = np.full((len(labels), 1008), -50.0)  # softmax within exp(-50) of one-hot
    logits[np.arange(len(labels)), labels] = 50.0
    mean, std = inception_score(logits, splits=4)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == pytest.approx(0, abs=1e-9)


def test_inception_score_is_lower_when_classes_are_unevenly_used():
    labels = np.array([0] * 30 + [1] * 10)
    logits = np.full((40, 1008), -50.0)
    logits[np.arange(40), labels] = 50.0
    # exp(H(p_y)) with p_y = (3/4, 1/4)
    expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert inception_score(logits, splits=1)[0] == pytest.approx(expected, rel=1e-9)


def _polynomial_mmd_biased(x, y):
    def k(a, b):
        return (a @ b.T / a.shape[1] + 1) ** 3

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def test_kid_is_unbiased_on_two_draws_of_one_distribution():
    rng = np.random.default_rng(0)
    dim, m, trials = 16, 20, 400
    unbiased, biased = [], []
    for _ in range(trials):
        x, y = rng.normal(size=(m, dim)), rng.normal(size=(m, dim))
        unbiased.append(kernel_inception_distance(x, y, subsets=1, subset_size=m)[0])
        biased.append(_polynomial_mmd_biased(x, y))
    unbiased, biased = np.array(unbiased), np.array(biased)
    standard_error = unbiased.std() / np.sqrt(trials)
    assert abs(unbiased.mean()) < 3 * standard_error  # centred on the true MMD^2 = 0
    assert (unbiased < 0).any()  # an unbiased estimate of 0 must go below it
    assert biased.mean() > 10 * standard_error  # the V-statistic is clearly biased upwards


def test_kid_separates_distributions_and_matches_the_formula_on_one_subset():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 8)), rng.normal(0.5, 1.0, size=(30, 8))
    m = 30

    def k(a, b):
        return (a @ b.T / 8 + 1) ** 3

    expected = ((k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1))
                + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1)) - 2 * k(x, y).mean())
    assert kernel_inception_distance(x, y, subsets=1, subset_size=m)[0] == pytest.approx(expected)
    assert expected > 0.1


def _pytorch_fid(a, b):
    ensure_host_importable()  # pytorch_fid imports torchvision
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calculate_frechet_distance(*statistics(a), *statistics(b))


def test_frechet_distance_equals_pytorch_fid():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 64))
    b = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.2
    assert frechet_distance(a, b) == pytest.approx(_pytorch_fid(a, b), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_fid_and_kid_equal_mimicrys_own_formulas():
    # The host's numpy code behind its TF metrics: the same features give the same scores.
    ensure_host_importable()
    from torch_mimicry.metrics.fid import fid_utils
    from torch_mimicry.metrics.kid import kid_utils

    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 32))
    b = rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32)) * 0.4 + 0.1
    mimicry_fid = fid_utils.calculate_frechet_distance(*statistics(a), *statistics(b))
    assert frechet_distance(a, b) == pytest.approx(mimicry_fid, rel=1e-9)
    # On one subset of every image no random draw is involved; Mimicry's estimate is unbiased.
    ours = kernel_inception_distance(a, b, subsets=1, subset_size=len(a))[0]
    assert ours == pytest.approx(kid_utils.polynomial_mmd(a, b), rel=1e-9)
    assert ours > 0.01


def test_frechet_distance_with_fewer_samples_than_dimensions():
    # pytorch-fid's sqrtm gives up here (imaginary part); the symmetric form does not.
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 64)), rng.normal(0.1, 1.5, size=(40, 64))
    (mu_a, s_a), (mu_b, s_b) = statistics(a), statistics(b)
    w, u = np.linalg.eigh(s_a)
    root_a = (u * np.sqrt(w.clip(0))) @ u.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(0)).sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_large_covariances_take_the_eigenvalue_route_to_the_same_value(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 64)), rng.normal(1.0, 2.0, size=(300, 64))
    accurate = frechet_distance(a, b)
    monkeypatch.setattr(scores, "SVD_MAX_SIZE", 0)
    assert frechet_distance(a, b) == pytest.approx(accurate, rel=1e-9)


def test_kid_has_no_spread_when_every_subset_is_the_whole_set():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(25, 8)), rng.normal(0.3, 1.0, size=(25, 8))
    mean, spread = kernel_inception_distance(x, y, subsets=50, subset_size=1000)
    assert spread is None  # one distinct subset: a standard deviation of ~1e-16 would mislead
    assert mean == pytest.approx(kernel_inception_distance(x, y, subsets=1, subset_size=25)[0])
    mean, spread = kernel_inception_distance(x, y, subsets=50, subset_size=10)
    assert spread is not None and spread > 0


def test_inception_score_takes_the_marginal_per_split():
    # The reference IS: KL(p(y|x) || p(y)) with p(y) the marginal of each split, not of all
    # images. Split 1 all class 0 and split 2 all class 1: each split scores 1, not 2.
    labels = np.array([0] * 20 + [1] * 20)
    logits = np.full((40, 1008), -50.0)
    logits[np.arange(40), labels] = 50.0
    assert inception_score(logits, splits=2) == pytest.approx((1.0, 0.0), abs=1e-9)
    # and the per-split scores are mean'd and spread (population std) as the reference does
    labels = np.array([0] * 20 + [0, 1] * 10)
    logits = np.full((40, 1008), -50.0)
    logits[np.arange(40), labels] = 50.0
    assert inception_score(logits, splits=2) == pytest.approx((1.5, 0.5), rel=1e-9)


def test_kid_subsets_are_drawn_from_the_seed():
    # Several random subsets: the seed fixes them, so a run is reproducible, and another seed
    # draws other subsets (a seed that is ignored would make every run share one draw).
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(60, 8)), rng.normal(0.3, 1.0, size=(60, 8))
    first = kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=1)
    assert kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=1) == first
    other = kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=2)
    assert other[0] != first[0] and other[1] != first[1]


def _reference_fid(a, b):
    """FID by its definition, with the symmetric root of S_a (as the test above)."""
    (mu_a, s_a), (mu_b, s_b) = statistics(a), statistics(b)
    w, u = np.linalg.eigh(s_a)
    root_a = (u * np.sqrt(w.clip(0))) @ u.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(0)).sum()
    return ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root


def test_a_singular_covariance_gives_a_finite_fid_on_both_routes(monkeypatch):
    # More samples than dimensions, but half the features are combinations of the others:
    # rounding leaves eigenvalues of about -1e-13, whose square roots must not become NaN.
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(300, 64)), rng.normal(1.0, 2.0, size=(300, 64))
    a[:, 32:] = a[:, :32] @ rng.normal(size=(32, 32))
    b[:, 32:] = b[:, :32] @ rng.normal(size=(32, 32))
    expected = _reference_fid(a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    monkeypatch.setattr(scores, "SVD_MAX_SIZE", 0)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_and_kid_refuse_fewer_than_two_samples():
    rng = np.random.default_rng(8)
    one, many = rng.normal(size=(1, 8)), rng.normal(size=(10, 8))
    for a, b in ((one, many), (many, one)):
        with pytest.raises(ValueError, match="FID needs at least 2 samples per set"):
            frechet_distance(a, b)
        with pytest.raises(ValueError, match="KID needs at least 2 samples per set"):
            kernel_inception_distance(a, b, subsets=3, subset_size=5)


def test_kid_is_the_mean_and_population_spread_of_its_subsets_as_mimicry_reports():
    # Mimicry's kid_score: np.mean and np.std (no n - 1) of the per-subset MMD^2 estimates.
    ensure_host_importable()
    from torch_mimicry.metrics.kid import kid_utils

    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(40, 8)), rng.normal(0.4, 1.0, size=(50, 8))
    draw = np.random.default_rng(3)
    estimates = []
    for _ in range(4):
        x = a[draw.choice(len(a), 12, replace=False)]
        y = b[draw.choice(len(b), 12, replace=False)]
        estimates.append(kid_utils.polynomial_mmd(x, y))
    mean, spread = kernel_inception_distance(a, b, subsets=4, subset_size=12, seed=3)
    assert mean == pytest.approx(np.mean(estimates), rel=1e-9)
    assert spread == pytest.approx(np.std(estimates), rel=1e-9)
