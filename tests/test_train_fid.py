"""FID during training: every k steps, of the generator, into TensorBoard."""

import math
import warnings
from pathlib import Path

import pytest
import torch
from inception_helpers import converted_weights
from omegaconf import OmegaConf
from run_helpers import make_run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sagan_plugin.config import compose
from sagan_plugin.errors import PluginWarning, UsageError
from sagan_plugin.metrics.scoring import fid_callback
from sagan_plugin.runs import load_generator
from sagan_plugin.train import run


def test_fid_every_k_steps_is_logged(tiny_overrides: list[str], tmp_path: Path,
                                     monkeypatch) -> None:
    monkeypatch.setenv("SAGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(converted_weights()))
    cfg = compose(tiny_overrides + ["train.steps=4", "train.fid_every=2", "train.fid_n=6"])
    # The small n is named by its key, with advice for a curve rather than for a final score.
    with pytest.warns(PluginWarning, match=r"^train\.fid_n=6 is below the 2048 Inception "
                      r"features: .*fine for comparing steps and runs at the same n; score the "
                      r"final model with `sagan-plugin eval n=10000`"):
        run(cfg)
    events = EventAccumulator(str(Path(cfg.run_dir) / "data" / "eval_fid"))
    events.Reload()
    scalars = events.Scalars("eval/fid")
    assert [e.step for e in scalars] == [2, 4]
    assert all(math.isfinite(e.value) and e.value > 0 for e in scalars)


def test_fid_during_training_leaves_the_run_as_it_would_be_without(
        tiny_overrides: list[str], tmp_path: Path, monkeypatch) -> None:
    """train.fid_every changes only how the run runs (it may change on resuming): scoring
    draws from its own random stream, so the weights are those of a run without it."""
    from sagan_plugin.checkpoint import checkpoint_path

    monkeypatch.setenv("SAGAN_CACHE_DIR", str(tmp_path / "cache"))  # real features computed
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(converted_weights()))
    states = []
    for fid in ([], ["train.fid_every=2", "train.fid_n=4"]):
        cfg = compose(tiny_overrides + ["train.steps=4", f"run_dir={tmp_path / str(len(fid))}",
                                        *fid])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginWarning)  # fid_n=4: the small-n warning
            run(cfg)
        states.append([torch.load(checkpoint_path(cfg.run_dir, 4, net), weights_only=False)
                       ["model_state_dict"] for net in ("netG", "netD")])
    for without, with_fid in zip(*states, strict=True):
        assert without.keys() == with_fid.keys()
        for key in without:
            assert torch.equal(without[key], with_fid[key]), key


def test_the_small_n_warning_is_for_fewer_images_than_features(recwarn) -> None:
    from sagan_plugin.metrics.inception import FEATURE_DIM
    from sagan_plugin.metrics.scoring import warn_if_biased

    warn_if_biased(FEATURE_DIM, "train.fid_n")  # 2048 images: a full-rank covariance
    assert [str(w.message) for w in recwarn] == []
    with pytest.warns(PluginWarning, match=r"^train\.fid_n=2047 is below the 2048 Inception"):
        warn_if_biased(FEATURE_DIM - 1, "train.fid_n")


def test_negative_fid_interval_is_refused(tiny_overrides: list[str]) -> None:
    with pytest.raises(UsageError, match="train.fid_every must be at least 0"):
        compose(tiny_overrides + ["train.fid_every=-1"])


def test_fid_callback_from_python_refuses_what_cannot_be_scored(tiny_overrides) -> None:
    """train.fid_n's rule does not guard a direct call: the callback checks, before any work."""
    data = compose(tiny_overrides).data
    with pytest.raises(UsageError, match=r"^n=1: FID, KID and IS need at least 2 images$"):
        fid_callback(data, every=1, n=1)
    with pytest.raises(UsageError, match=r"^FID every 0 steps: expected at least 1$"):
        fid_callback(data, every=0, n=2)


@pytest.mark.usefixtures("inception_caches")
def test_fid_callback_samples_in_eval_mode_and_leaves_g_as_it_was(tmp_path: Path) -> None:
    """Scoring mid-training samples with the BN running statistics (as `eval` does) and must
    not move them, nor the step count, nor the mode the training loop left G in."""
    run_dir = make_run(tmp_path / "run")
    netG = load_generator(run_dir).netG
    assert any(k.endswith("num_batches_tracked") for k in netG.state_dict())
    modes = []
    netG.register_forward_pre_hook(lambda net, args: modes.append(net.training))
    data = OmegaConf.merge(OmegaConf.load(run_dir / "config.yaml").data, {"size": 8})
    with pytest.warns(PluginWarning, match="below the 2048"):
        callback = fid_callback(data, every=1, n=3, device="cpu",
                                stats_cache=str(tmp_path / "stats"))
    for training in (True, False):
        netG.train(training)
        before = {k: v.clone() for k, v in netG.state_dict().items()}
        modes.clear()
        assert callback(netG, 1)["fid"] > 0
        assert modes and not any(modes)  # every forward pass in eval mode
        assert netG.training is training
        assert all(m.training is training for m in netG.modules())
        after = netG.state_dict()
        for key, value in before.items():
            assert torch.equal(after[key], value), key
