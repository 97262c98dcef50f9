"""Data-parallel PPO across processes (torchrun / accelerate launch), and a no-op otherwise.

Under a launcher (``WORLD_SIZE`` > 1 in the environment) ``rlhf run`` works like this:

- **Rank 0 alone** runs the stages before PPO (world, pretrain, SFT, reward model) as a
  plain single process: the launcher's variables are hidden from it meanwhile, so the
  Hugging Face Trainer inside SFT does not try to form a process group. The other ranks
  wait for rank 0's ``dist_ready.json`` of this launch. These stages are short next to PPO.
- **All ranks** then form a process group (NCCL on GPUs, gloo on CPUs) and run PPO data-
  parallel: ``ppo.batch_size`` and ``ppo.minibatch_size`` stay *global* (so a sweep means the
  same thing on 1 or 8 GPUs); each rank samples and scores its 1/W of the prompts, and
  gradients are averaged across ranks before every optimiser step, so every rank holds the
  same weights (checked at each checkpoint). Logged metrics are means over all ranks;
  the KL controller sees the global mean KL.
- **Only rank 0 writes** the run directory (status, metrics, models); each rank adds its own
  RNG state to a checkpoint. A stop request (SIGTERM from the launcher, Slurm preemption) is
  agreed across ranks, so all of them checkpoint the same iteration.

Without a launcher every function here is a cheap no-op and a run is exactly the
single-process run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

LAUNCHER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                 "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE")


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) without one."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    return rank, world, local


@contextlib.contextmanager
def single_process_env() -> Iterator[None]:
    """Hide the launcher's variables (rank 0 running the pre-PPO stages on its own)."""
    saved = {k: os.environ.pop(k) for k in LAUNCHER_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False  # a process group is up
    coll_device: torch.device = torch.device("cpu")  # where collective tensors live (cuda for NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- set-up -----------------------------------------------------------------------
    def start(self, device: torch.device) -> torch.device:
        """Form the process group (all ranks must call this); returns this rank's device."""
        if self.world <= 1 or self.active:
            return device
        import torch.distributed as td
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        td.init_process_group(backend=backend, rank=self.rank, world_size=self.world,
                              timeout=datetime.timedelta(hours=2))
        self.active = True
        self.coll_device = device if backend == "nccl" else torch.device("cpu")
        return device

    def stop(self) -> None:
        if self.active:
            import torch.distributed as td
            td.destroy_process_group()
            self.active = False

    # -- collectives (no-ops for one process) -----------------------------------------
    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td
            td.barrier()

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (one flat all-reduce)."""
        if not self.active:
            return
        import torch.distributed as td
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        td.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def mean_dict(self, row: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of each number in ``row`` (same keys on every rank)."""
        if not self.active:
            return row
        import torch.distributed as td
        keys = sorted(row)
        t = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64, device=self.coll_device)
        td.all_reduce(t)
        t /= self.world
        return {**row, **{k: float(v) for k, v in zip(keys, t.tolist())}}

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.active:
            return bool(flag)
        import torch.distributed as td
        t = torch.tensor([1.0 if flag else 0.0], device=self.coll_device)
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return bool(t.item() > 0)

    def check_same_weights(self, params: list[torch.Tensor], what: str) -> None:
        """Raise if the ranks' weights differ (a broken gradient sync)."""
        if not self.active:
            return
        import torch.distributed as td
        with torch.no_grad():
            fp = torch.stack([p.detach().double().sum() for p in params]).to(self.coll_device)
        lo, hi = fp.clone(), fp.clone()
        td.all_reduce(lo, op=td.ReduceOp.MIN)
        td.all_reduce(hi, op=td.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise RuntimeError(f"{what}: the ranks' weights differ (max gap {float((hi - lo).abs().max()):.3g})")


READY_FILE = "dist_ready.json"  # in the run directory: rank 0 finished the stages before PPO


def launch_id() -> str:
    """Identifies this launch (the same on every rank, new on every launch or restart)."""
    return "{}/{}/{}/{}".format(os.environ.get("TORCHELASTIC_RUN_ID", ""), os.environ.get("MASTER_PORT", ""),
                                os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.getppid())  # the launcher


def announce_ready(path) -> None:
    from .rundir import atomic_write_json
    atomic_write_json(path, {"launch": launch_id()})


def wait_ready(path, poll_s: float = 0.5) -> None:
    """Ranks > 0: wait until rank 0 has finished the stages before PPO in this launch (if
    rank 0 fails instead, the launcher stops this process)."""
    import json
    import time
    from pathlib import Path
    me = launch_id()
    while True:
        try:
            if json.loads(Path(path).read_text()).get("launch") == me:
                return
        except (OSError, ValueError):
            pass
        time.sleep(poll_s)


def from_env() -> Dist:
    rank, world, local = env_world()
    return Dist(rank=rank, world=world, local_rank=local)


def shard(items: list, d: Optional[Dist]) -> list:
    """This rank's share of a global list (every W-th item, from its rank)."""
    if d is None or d.world <= 1:
        return items
    return items[d.rank::d.world]
