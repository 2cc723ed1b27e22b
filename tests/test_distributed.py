"""Data-parallel training on two CPU processes (gloo): DDP maths, the real trainer, torchrun."""

import copy
import json
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from sagan_plugin.config import compose

TINY = ["model=sagan", "data=procedural", "model.ngf=8", "model.ndf=8", "data.size=64",
        "data.num_workers=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world_size: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _one_step(netG, netD, x, y, z, zy) -> None:
    """One D and one G step of the nets' own train_step, with given noise, on SGD."""
    from sagan_plugin.host import MetricLog

    netG.sample_inputs = lambda n, c=None, device=None: (z, zy)
    optD = torch.optim.SGD(netD.parameters(), lr=0.1)
    optG = torch.optim.SGD(netG.parameters(), lr=0.1)
    netD.train_step((x, y), netG, optD, MetricLog(), device="cpu")
    netG.train_step((x, y), netD, optG, MetricLog(), device="cpu")


def _ddp_step_worker(rank: int, port: int, mode: str, out: str) -> None:
    import torch.distributed as dist

    from sagan_plugin.config import build_models
    from sagan_plugin.distributed import destroy_process_group, wrap

    _join(rank, 2, port)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    # float64: fp32 rounding through D's sum over 8x8 maps would reach 1e-4 and hide nothing
    torch.set_default_dtype(torch.float64)
    netG, netD = (net.double() for net in build_models(compose(TINY + ["data.num_classes=3"])))
    if mode == "eval":  # BN on running statistics, SN on its stored vectors: per-sample losses
        netG.eval(), netD.eval()
    batch = 8
    x, y = torch.rand(batch, 3, 32, 32) * 2 - 1, torch.randint(3, (batch,))
    z, zy = torch.randn(batch, 128), torch.randint(3, (batch,))
    if mode == "train":  # both halves equal: per-rank BN statistics are the global ones
        x, y, z, zy = (torch.cat([t[:4], t[:4]]) for t in (x, y, z, zy))
    reference = (copy.deepcopy(netG), copy.deepcopy(netD))
    _one_step(*reference, x, y, z, zy)  # one process, the whole batch of 8

    half = slice(4 * rank, 4 * rank + 4)
    for net in (netG, netD):
        wrap(net, torch.device("cpu"))
    _one_step(netG, netD, x[half], y[half], z[half], zy[half])  # 2 x 4
    if rank == 0:
        torch.save({"ddp": [netG.state_dict(), netD.state_dict()],
                    "single": [reference[0].state_dict(), reference[1].state_dict()]}, out)
    destroy_process_group()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_two_halves_update_like_one_batch(mode: str, tmp_path: Path) -> None:
    """2 processes x B/2 give the update of 1 x B.

    Exact where the loss is a mean of per-sample terms: "eval" (distinct halves; BN uses its
    running statistics), or "train" with identical halves (then each rank's BN batch statistics
    equal the global batch's). With distinct halves in train mode they differ by design: BN
    normalises each rank's batch on its own (SyncBatchNorm, GPU-only in torch: train.sync_bn).
    """
    out = tmp_path / "states.pt"
    mp.spawn(_ddp_step_worker, args=(_free_port(), mode, str(out)), nprocs=2)
    states = torch.load(out)
    compared = 0
    for ddp, single in zip(states["ddp"], states["single"], strict=True):
        for key, value in single.items():
            if mode == "train" and key.endswith("running_var"):
                continue  # the unbiased estimate divides by n - 1, n the per-rank batch
            torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-10, msg=key)
            compared += 1
    assert compared > 50


def _trainer_worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    from sagan_plugin.train import run

    _join(rank, 2, port)
    trainer = run(compose(overrides))
    torch.save([trainer.netG.state_dict(), trainer.netD.state_dict(),
                trainer.ema.state_dict()], f"{out}.{rank}")


def test_trainer_keeps_ranks_identical_and_resumes_on_one_process(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sagan_plugin.checkpoint import load_latest
    from sagan_plugin.train import run

    run_dir = tmp_path / "run"
    overrides = TINY + [f"run_dir={run_dir}", "train.batch_size=8", "train.steps=3",
                        "train.save_steps=3", "train.ema_decay=0.9"]
    mp.spawn(_trainer_worker, args=(_free_port(), overrides, str(tmp_path / "w")), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"w.{r}") for r in (0, 1))
    compared = 0
    for a, b in zip(rank0, rank1, strict=True):  # G, D, EMA of G
        for key in a:
            # BN running statistics are per rank (each updates them from its own half batch
            # after DDP broadcast rank 0's at the forward's start); rank 0's are saved.
            if not key.endswith(("running_mean", "running_var")):
                assert torch.equal(a[key], b[key]), key  # weights, SN u/v vectors
                compared += key.endswith("_u")
    assert compared > 20
    step, ckpts = load_latest(run_dir)
    assert step == 3 and len(ckpts["netG"]["training_state"]["rng"]) == 2
    assert ckpts["netG"]["training_state"]["data"] == {"epoch": 0, "batches": 3}
    for key, value in rank0[0].items():
        assert torch.equal(ckpts["netG"]["model_state_dict"][key], value)
    assert json.loads((run_dir / "params.json").read_text())["batch_size"] == 8  # global

    # The same checkpoint format: one process takes over and trains on.
    trainer = run(compose(overrides[:-3] + ["train.batch_size=8", "train.steps=5",
                                            "train.save_steps=3", "train.ema_decay=0.9"]))
    assert trainer.data_position == {"epoch": 0, "batches": 5}
    assert load_latest(run_dir)[0] == 5
    assert "the checkpoint was written by 2 processes, this run has 1: random streams " \
           "restart from the seed" in capsys.readouterr().out


def _torchrun(*arguments: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m sagan_plugin train ARGUMENTS`, on CPUs (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "sagan_plugin", "train", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_torchrun_trains_continues_and_refuses_an_indivisible_batch(tmp_path: Path) -> None:
    done = _torchrun(*TINY, f"run_dir={tmp_path / 'run'}", "train.batch_size=4", "train.steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run/checkpoints/netG/netG_2_steps.pth").is_file()
    assert done.stdout.count("Starting training from global step 0") == 1  # rank 0 speaks

    # Continued from its config.yaml: each INFO line once per launch, not once per rank.
    more = _torchrun(f"run_dir={tmp_path / 'run'}", "train.steps=3")
    assert more.returncode == 0, more.stderr[-2000:]
    assert more.stdout.count("INFO: continuing") == 1, more.stdout
    assert more.stdout.count("INFO: restored the checkpoint of step 2") == 1, more.stdout

    failed = _torchrun(*TINY, f"run_dir={tmp_path / 'odd/run'}", "train.batch_size=5",
                       "train.steps=1")
    assert failed.returncode != 0
    assert "error: train.batch_size=5 is the global batch and must divide evenly over the 2 " \
           "processes" in failed.stderr
    assert not (tmp_path / "odd").exists()


def _volume_worker(rank: int, port: int, out: str) -> None:
    """Counts the bytes DDP all-reduces over one D and one G step, through comm hooks; then
    leaves the launch with no wrapper alive."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from sagan_plugin.config import build_models
    from sagan_plugin.distributed import destroy_process_group, wrap

    _join(rank, 2, port)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    netG, netD = build_models(compose(TINY + ["data.num_classes=3"]))
    moved = {"G": 0, "D": 0}
    for name, net in (("G", netG), ("D", netD)):
        def counting_hook(state, bucket, name=name):
            moved[name] += bucket.buffer().numel() * bucket.buffer().element_size()
            return allreduce_hook(state, bucket)

        wrapper = wrap(net, torch.device("cpu"))
        wrapper.register_comm_hook(None, counting_hook)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(3, (4,))
    _one_step(netG, netD, x, y, torch.randn(4, 128), torch.randint(3, (4,)))
    if rank == 0:
        torch.save(moved, out)
    alive = weakref.ref(wrapper)
    del wrapper
    destroy_process_group()
    # A DDP wrapper left for interpreter exit aborted ~1 exit in 4 (gloo, torch 2.13).
    assert alive() is None, "destroy_process_group left a DDP wrapper alive"


def test_all_reduce_volume_is_the_one_ddp_estimate_counts(tmp_path: Path, monkeypatch) -> None:
    """benchmarks/ddp_estimate.py's bytes per step are what DDP moves: each net's fp32
    gradients once per step of its own, none of D's in G's step."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import ddp_estimate

    from sagan_plugin.config import build_models

    out = tmp_path / "moved.pt"
    mp.spawn(_volume_worker, args=(_free_port(), str(out)), nprocs=2)
    moved = torch.load(out)
    counts = ddp_estimate.count_tensors(*build_models(compose(TINY + ["data.num_classes=3"])))
    assert moved == {"G": 4 * counts["parameters_G"], "D": 4 * counts["parameters_D"]}
    assert ddp_estimate.bytes_per_step(counts, n_dis=1)["all_reduce"] == sum(moved.values())


def _epoch(sampler, epoch: int, batches: int = 0) -> list[int]:
    """The image indices the data loader reads from (epoch, batches) on, in order."""
    from sagan_plugin.data import build_dataloader

    sampler.start_at(epoch, batches)
    loader = build_dataloader(torch.utils.data.TensorDataset(torch.arange(40)), 4, 0, sampler)
    return [int(i) for (batch,) in loader for i in batch]


def test_the_sampler_reshuffles_each_epoch_and_resumes_mid_epoch() -> None:
    """A resumed run must read the batches the interrupted one would have: epoch e's own
    order (a new one each epoch), less the batches already read."""
    from sagan_plugin.distributed import EpochSampler, World

    sampler = EpochSampler(list(range(40)), 4, World(), seed=3)
    first, second = _epoch(sampler, 0), _epoch(sampler, 1)
    assert sorted(first) == sorted(second) == list(range(40))
    assert first != second
    assert _epoch(sampler, 1, 3) == second[12:]
    assert _epoch(sampler, 0, 9) == first[36:]
    assert list(sampler) == first  # the skip is for one iteration only
    assert _epoch(EpochSampler(list(range(40)), 4, World(), seed=3), 1) == second
    # Two ranks of 2 images a batch read global batch k of the same order between them.
    ranks = [EpochSampler(list(range(40)), 2, World(rank, 2), seed=3) for rank in range(2)]
    for rank in ranks:
        rank.start_at(1, 3)
    shares = [list(rank) for rank in ranks]
    assert all(len(share) == 14 for share in shares)
    for k in range(7):
        assert {*shares[0][2 * k:2 * k + 2], *shares[1][2 * k:2 * k + 2]} == \
            set(second[12 + 4 * k:16 + 4 * k])


def _collectives_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from sagan_plugin.distributed import (
        World,
        broadcast_from_main,
        gather_to_main,
        max_over_ranks,
    )

    _join(rank, 2, port)
    dist.init_process_group("gloo")
    world, cpu = World(rank, 2, rank), torch.device("cpu")
    seen = {"both_signalled": max_over_ranks([0, 15], cpu),
            "each_its_own": max_over_ranks([[1, 0], [0, 2]][rank], cpu),
            "broadcast": broadcast_from_main(f"rank {rank}", world),
            "gathered": gather_to_main(f"rank {rank}", world)}
    torch.save(seen, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ranks_agree_through_max_broadcast_and_gather(tmp_path: Path) -> None:
    """How ranks agree after each step: a SIGTERM that reached every rank stays SIGTERM (not
    the sum of their signals), a NaN on one rank and a signal on another both count; rank 0's
    value is broadcast; rank 0 gathers every rank's in rank order."""
    out = tmp_path / "seen"
    mp.spawn(_collectives_worker, args=(_free_port(), str(out)), nprocs=2)
    rank0, rank1 = (torch.load(f"{out}.{rank}") for rank in (0, 1))
    assert rank0 == {"both_signalled": [0, 15], "each_its_own": [1, 2], "broadcast": "rank 0",
                     "gathered": ["rank 0", "rank 1"]}
    assert rank1 == {**rank0, "gathered": None}


def test_each_rank_takes_the_gpu_of_its_local_rank() -> None:
    """On the second node of a launch, global rank 5 is local rank 1: it takes cuda:1, and
    only global rank 0 is the main process."""
    from sagan_plugin.distributed import World, device_for_rank
    from sagan_plugin.errors import UsageError

    second_node = World(rank=5, world_size=8, local_rank=1)
    assert device_for_rank(torch.device("cuda"), second_node) == torch.device("cuda", 1)
    assert device_for_rank(torch.device("cpu"), second_node) == torch.device("cpu")
    assert device_for_rank(torch.device("cuda", 3), World()) == torch.device("cuda", 3)
    with pytest.raises(UsageError, match="train.device=cuda:0 names one GPU, but torchrun "
                                         "started 8 processes; use train.device=cuda or auto"):
        device_for_rank(torch.device("cuda", 0), second_node)
    assert not World(rank=4, world_size=8, local_rank=0).is_main
    assert World(rank=0, world_size=8, local_rank=0).is_main


def test_rank_variables_that_are_not_integers_are_a_usage_error(monkeypatch) -> None:
    from sagan_plugin.distributed import world_from_env
    from sagan_plugin.errors import UsageError

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UsageError, match="RANK, WORLD_SIZE and LOCAL_RANK must be integers"):
        world_from_env()


def test_sync_bn_on_cpu_processes_is_refused_before_joining_the_launch(
        tiny_overrides: list[str], monkeypatch) -> None:
    """torch's SyncBatchNorm runs on GPUs only: a torchrun of CPU processes with train.sync_bn
    is a one-line error, not a crash once the processes have met."""
    from sagan_plugin import train
    from sagan_plugin.errors import UsageError

    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(train, "init_process_group",
                        lambda *args: pytest.fail("joined the launch"))
    with pytest.raises(UsageError) as error:
        train.run(compose(tiny_overrides + ["train.sync_bn=true", "train.device=cpu"]))
    assert str(error.value) == ("train.sync_bn needs GPUs under torchrun (torch's SyncBatchNorm "
                                "runs on GPUs only); leave it false")
