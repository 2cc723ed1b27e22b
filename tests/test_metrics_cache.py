"""Real-image features are computed once per (data set, split, resolution, n, weights)."""

import numpy as np
import pytest
import torch
from inception_helpers import converted_weights
from omegaconf import OmegaConf

from sagan_plugin.data import build_dataset
from sagan_plugin.errors import UsageError
from sagan_plugin.metrics.features import FeatureExtractor
from sagan_plugin.metrics.real_stats import real_features

pytestmark = pytest.mark.slow


def _counting(extractor):
    calls = []
    extract = extractor.extract
    extractor.extract = lambda *a, **k: calls.append(1) or extract(*a, **k)
    return calls


@pytest.fixture
def data_cfg():
    return OmegaConf.create({"name": "procedural", "resolution": 32, "num_classes": 10,
                             "split": "train", "size": 16})


def test_cache_is_reused_and_invalidated_when_the_weights_change(tmp_path, data_cfg):
    dataset = build_dataset(data_cfg)
    extractor = FeatureExtractor(converted_weights(), device="cpu")
    calls = _counting(extractor)
    first, path = real_features(data_cfg, dataset, 3, extractor, tmp_path)
    again, same_path = real_features(data_cfg, dataset, 3, extractor, tmp_path)
    assert len(calls) == 1 and same_path == path and np.array_equal(first, again)
    assert first.shape == (3, 2048)
    assert path.name.startswith("procedural_train_32px_n3_w" + extractor.weights.sha256[:12])

    state = torch.load(converted_weights(), weights_only=True)
    state["Mixed_7c.branch_pool.bn.bias"] += 0.5  # other weights, other features
    changed_file = tmp_path / "changed.pth"
    torch.save(state, changed_file)
    changed = FeatureExtractor(changed_file, device="cpu")
    changed_calls = _counting(changed)
    other, other_path = real_features(data_cfg, dataset, 3, changed, tmp_path)
    assert len(changed_calls) == 1 and other_path != path
    assert not np.allclose(other, first)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == sorted([path.name, other_path.name])

    # The sample count and the data config are part of the key too.
    _, fewer = real_features(data_cfg, dataset, 2, extractor, tmp_path)
    data_cfg.size = 17
    _, resized = real_features(data_cfg, build_dataset(data_cfg), 2, extractor, tmp_path)
    assert len({path, other_path, fewer, resized}) == 4 and len(calls) == 3


@pytest.mark.parametrize("damage", ["foreign", "truncated"])
def test_damaged_cache_entry_is_recomputed(tmp_path, data_cfg, damage):
    dataset = build_dataset(data_cfg)
    extractor = FeatureExtractor(converted_weights(), device="cpu")
    first, path = real_features(data_cfg, dataset, 2, extractor, tmp_path)
    path.write_bytes(b"not an npz" if damage == "foreign" else path.read_bytes()[:500])
    again, _ = real_features(data_cfg, dataset, 2, extractor, tmp_path)
    assert np.array_equal(first, again)


def test_more_real_images_than_the_data_set_has_is_an_error(tmp_path, data_cfg):
    extractor = FeatureExtractor(converted_weights(), device="cpu")
    with pytest.raises(UsageError, match="n_real=17 is more than the 16 images"):
        real_features(data_cfg, build_dataset(data_cfg), 17, extractor, tmp_path)


def test_the_real_images_are_a_seeded_random_subset_not_the_first_n(monkeypatch):
    """The n real images are a fixed random draw from the data set, not its first n."""
    from types import SimpleNamespace

    from sagan_plugin.metrics import real_stats

    read = []
    monkeypatch.setattr(real_stats, "dataset_batches",
                        lambda dataset, indices, batch_size: read.append(list(indices)) or [])
    extractor = SimpleNamespace(batch_size=4, extract=lambda batches, total, desc: SimpleNamespace(
        features=np.zeros((total, 2048))))
    real_stats.subset_features(list(range(100)), 10, extractor)
    expected = torch.randperm(100, generator=torch.Generator().manual_seed(
        real_stats.SUBSET_SEED))[:10].sort().values.tolist()
    assert read == [expected] and expected != list(range(10))
    real_stats.subset_features(list(range(100)), 10, extractor)
    assert read[1] == expected  # the same subset every time


def _fake_extractor(calls):
    """An extractor of the features a real one would return, without Inception: seeded."""
    from types import SimpleNamespace

    def extract(batches, total, desc):
        calls.append(total)
        rng = np.random.default_rng(len(calls))
        return SimpleNamespace(features=rng.normal(size=(total, 2048)) / 3)

    return SimpleNamespace(batch_size=4, extract=extract,
                           weights=SimpleNamespace(sha256="ab" * 32))


def test_a_cache_hit_scores_exactly_as_the_miss_that_wrote_it(tmp_path, data_cfg):
    """Features read back from the cache are the float64 the first call returned, so FID is
    the same number whether or not the real images were cached."""
    from sagan_plugin.metrics.scores import frechet_distance

    calls = []
    dataset, extractor = build_dataset(data_cfg), _fake_extractor(calls)
    first, path = real_features(data_cfg, dataset, 6, extractor, tmp_path)
    again, _ = real_features(data_cfg, dataset, 6, extractor, tmp_path)
    assert calls == [6] and first.dtype == again.dtype == np.float64
    fake = np.random.default_rng(9).normal(size=(6, 2048))
    assert frechet_distance(fake, again) == frechet_distance(fake, first)
    np.savez(path, other=np.zeros(3))  # an npz without features: damaged, recomputed
    recomputed, _ = real_features(data_cfg, dataset, 6, extractor, tmp_path)
    assert calls == [6, 6] and recomputed.shape == (6, 2048)
