"""FID during training: every k steps, of the generator, into TensorBoard."""

import math
from pathlib import Path

import pytest
from inception_helpers import converted_weights
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sagan_plugin.config import compose
from sagan_plugin.errors import PluginWarning, UsageError
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


def test_negative_fid_interval_is_refused(tiny_overrides: list[str]) -> None:
    with pytest.raises(UsageError, match="train.fid_every must be at least 0"):
        compose(tiny_overrides + ["train.fid_every=-1"])
