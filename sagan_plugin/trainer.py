"""Mimicry's Trainer, extended: a progress bar, a last sample grid, config-checked resume.

The host's loop is kept as it is (n_dis, learning-rate decay, TensorBoard summaries, sample
grids, checkpoints every save_steps, resume from the latest checkpoint, save on Ctrl-C).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from sagan_plugin.host import Logger, MetricLog, Trainer
from sagan_plugin.runs import checkpoint_steps


class ProgressLogger(Logger):
    """The host's logger, printing a tqdm bar (it/s, ETA, latest losses) instead of log lines."""

    bar: tqdm | None = None

    def print_log(self, global_step: int, log_data: MetricLog, time_taken: float) -> str:
        if self.bar is None:
            self.bar = tqdm(total=self.num_steps, initial=global_step - 1, unit="step",
                            dynamic_ncols=True, mininterval=0.5)
        self.bar.update(global_step - self.bar.n)
        postfix = {name: f"{log_data[name]:.3g}" for name in sorted(log_data.keys())}
        self.bar.set_postfix(postfix, refresh=False)
        return str(self.bar)

    def close_writers(self) -> None:
        super().close_writers()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SAGANTrainer(Trainer):
    """The host's Trainer with a progress bar; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logger = ProgressLogger(log_dir=self.log_dir, num_steps=self.num_steps,
                                     dataset_size=len(self.dataloader), device=self.device,
                                     flush_secs=kwargs.get("flush_secs", 30))

    def _log_params(self, params: dict) -> None:
        # The host refuses a resume when anything in params.json changed, the step count
        # included; config.yaml is checked instead (train.check_resume), so a run can be extended.
        with open(os.path.join(self.log_dir, "params.json"), "w") as f:
            json.dump(params, f, indent=2)

    def train(self) -> None:
        super().train()
        steps = checkpoint_steps(self.log_dir)
        if steps and steps[-1] % self.vis_steps:
            # The host draws grids every vis_steps only: always leave one of the last step.
            self.logger.vis_images(netG=self.netG, global_step=steps[-1])
            self.logger.close_writers()

    def last_grid(self) -> Path | None:
        """The newest fixed-noise sample grid the run wrote."""
        steps = checkpoint_steps(self.log_dir)
        grid = Path(self.log_dir) / "images" / f"fixed_fake_samples_step_{steps[-1]}.png"
        return grid if steps and grid.is_file() else None
