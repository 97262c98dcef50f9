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
- **The one-process estimator.** Reward and advantage whitening use the statistics of the
  global batch (:meth:`Dist.all_sum` of the sums and counts of all ranks), and each rank's
  token-mean losses are weighted by its share of the minibatch's tokens
  (:meth:`Dist.token_share`) before the gradients are averaged, so W ranks compute the
  same loss and gradient as one process given the same global batch
  (``tests/test_dist.py``). The ranks still sample with their own random streams, so a
  W-rank run is not the one-process run bit for bit.
- **Only rank 0 writes** the run directory (status, metrics, models); each rank adds its own
  RNG state to a checkpoint. A stop request (SIGTERM from the launcher, Slurm preemption) is
  agreed across ranks, so all of them checkpoint the same iteration.
- **Nothing waits forever.** A rank waits at most ``RLHF_DIST_TIMEOUT_S`` seconds (default
  7200) at a barrier or collective, and at most ``RLHF_READY_TIMEOUT_S`` (default 86400) for
  rank 0 to finish the stages before PPO; then it stops with :class:`DistTimeout`, naming
  what it waited for. Launches are told apart by :func:`launch_id`, which is the same on
  every node.

With ``ppo.sharding=fsdp`` the ranks shard the models with FSDP2 instead of holding full
replicas (``rlhf/sharding.py``); everything above holds unchanged, FSDP's reduce-scatter
taking the place of :meth:`Dist.average_gradients` for the sharded parameters.

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

DEFAULT_TIMEOUT_S = 7200.0  # barriers and collectives (RLHF_DIST_TIMEOUT_S)
DEFAULT_READY_TIMEOUT_S = 86400.0  # ranks > 0 waiting for rank 0's stages before PPO (RLHF_READY_TIMEOUT_S)


class DistTimeout(RuntimeError):
    """A rank waited longer than its timeout for the other ranks; the message says for what."""


def _seconds(var: str, default: float) -> float:
    raw = os.environ.get(var, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise DistTimeout(f"{var}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise DistTimeout(f"{var}={raw!r} must be > 0 seconds")
    return value


def timeout_s() -> float:
    """Seconds a rank waits at a barrier or collective: ``RLHF_DIST_TIMEOUT_S`` (default 7200)."""
    return _seconds("RLHF_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)


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


def is_dtensor(t) -> bool:
    """Whether ``t`` is a sharded tensor or parameter (a ``DTensor``: ``ppo.sharding=fsdp``,
    ``rlhf/sharding.py``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without DTensor: nothing is sharded
        return False
    return isinstance(t, DTensor)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False  # a process group is up
    coll_device: torch.device = torch.device("cpu")  # where collective tensors live (cuda for NCCL)
    _barriers: int = 0  # barriers passed (each has its own key in the store)

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
                              timeout=datetime.timedelta(seconds=timeout_s()))
        self.active = True
        self.coll_device = device if backend == "nccl" else torch.device("cpu")
        return device

    def stop(self) -> None:
        if self.active:
            import torch.distributed as td
            td.destroy_process_group()
            self.active = False

    # -- collectives (no-ops for one process) -----------------------------------------
    def barrier(self, what: str = "a barrier", timeout: Optional[float] = None) -> None:
        """Wait until every rank has arrived here; after ``timeout`` seconds (default
        :func:`timeout_s`) raise :class:`DistTimeout` naming ``what`` and how many ranks
        arrived. Implemented on the process group's store (any backend): each rank counts
        itself in, the last one to arrive opens the barrier."""
        if not self.active:
            return
        import torch.distributed as td
        t = timeout_s() if timeout is None else timeout
        self._barriers += 1
        key = f"rlhf/barrier/{self._barriers}"
        try:
            store = td.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):  # a torch without it: the backend's own barrier
            td.barrier()
            return
        if store.add(key, 1) == self.world:
            store.set(key + "/open", "1")
        try:
            store.wait([key + "/open"], datetime.timedelta(seconds=t))
        except Exception as e:  # noqa: BLE001 - the store's timeout error type differs across torch versions
            arrived = store.add(key, 0)
            raise DistTimeout(f"rank {self.rank}: waited {t:g} s at {what} for the other ranks; {arrived} of "
                              f"{self.world} arrived (a rank failed or hangs? RLHF_DIST_TIMEOUT_S sets the "
                              f"wait): {type(e).__name__}") from None

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over ranks (a new tensor on ``t``'s device); ``t`` itself for one process."""
        if not self.active:
            return t
        import torch.distributed as td
        s = t.detach().to(self.coll_device, copy=True)
        td.all_reduce(s)
        return s.to(t.device)

    def token_share(self, mask: torch.Tensor) -> float:
        """W·n_r/N: this rank's share of the minibatch's tokens (``mask`` sums to n_r here, N over
        all ranks), times the number of ranks W. A token-mean loss multiplied by it, then
        averaged over ranks by :meth:`average_gradients`, is the token mean over the global
        minibatch: Σ_r (n_r/N)·mean_r. 1.0 for one process."""
        if not self.active:
            return 1.0
        n = mask.detach().double().sum().reshape(1)
        total = float(self.all_sum(n).item())
        return self.world * float(n.item()) / total if total > 0 else 1.0

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (one flat all-reduce). Gradients of
        FSDP-sharded parameters (``ppo.sharding=fsdp``) are left alone: FSDP's backward
        reduce-scattered them to the same mean."""
        if not self.active:
            return
        import torch.distributed as td
        grads = [p.grad for p in params if p.grad is not None and not is_dtensor(p)]  # FSDP averaged those
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
        """Raise if the ranks' weights differ (a broken gradient sync). FSDP shards
        (``ppo.sharding=fsdp``) differ by design and are skipped."""
        if not self.active:
            return
        import torch.distributed as td
        params = [p for p in params if not is_dtensor(p)]
        if not params:
            return
        with torch.no_grad():
            fp = torch.stack([p.detach().double().sum() for p in params]).to(self.coll_device)
        lo, hi = fp.clone(), fp.clone()
        td.all_reduce(lo, op=td.ReduceOp.MIN)
        td.all_reduce(hi, op=td.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise RuntimeError(f"{what}: the ranks' weights differ (max gap {float((hi - lo).abs().max()):.3g})")


READY_FILE = "dist_ready.json"  # in the run directory: rank 0 finished the stages before PPO


def launch_id() -> str:
    """Identifies this launch: the same on every rank and every node of one launch, new on
    every launch and every restart. The first of: ``RLHF_LAUNCH_ID``; torchrun's rendezvous
    id (``TORCHELASTIC_RUN_ID``, unless its default ``none``); Slurm's job and step
    (``SLURM_JOB_ID``, ``SLURM_STEP_ID``, ``SLURM_RESTART_COUNT``); else, on one node only,
    the launcher's port and pid. torchrun's restart count is added to each."""
    env = os.environ
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    run_id = env.get("TORCHELASTIC_RUN_ID", "")
    if env.get("RLHF_LAUNCH_ID"):
        base = "rlhf:" + env["RLHF_LAUNCH_ID"]
    elif run_id and run_id.lower() != "none":
        base = "torchrun:" + run_id
    elif env.get("SLURM_JOB_ID"):
        base = "slurm:{}.{}.{}".format(env["SLURM_JOB_ID"], env.get("SLURM_STEP_ID", ""),
                                       env.get("SLURM_RESTART_COUNT", "0"))
    else:
        base = "node:{}/{}".format(env.get("MASTER_PORT", ""), os.getppid())  # the launcher
    return f"{base}/{restart}"


def announce_ready(path) -> None:
    from .rundir import atomic_write_json
    atomic_write_json(path, {"launch": launch_id()})


def wait_ready(path, poll_s: float = 0.5, timeout: Optional[float] = None) -> None:
    """Ranks > 0: wait until rank 0 has finished the stages before PPO in this launch
    (``path`` names this launch's id). If rank 0 fails instead, the launcher normally stops
    this process; after ``timeout`` seconds (default ``RLHF_READY_TIMEOUT_S``, 86400) it
    raises :class:`DistTimeout` itself."""
    import json
    import time
    from pathlib import Path
    me = launch_id()
    t = _seconds("RLHF_READY_TIMEOUT_S", DEFAULT_READY_TIMEOUT_S) if timeout is None else timeout
    deadline = time.monotonic() + t
    seen = None
    while True:
        try:
            seen = json.loads(Path(path).read_text()).get("launch")
            if seen == me:
                return
        except (OSError, ValueError, AttributeError):
            pass
        if time.monotonic() >= deadline:
            found = f"it names launch {seen!r}" if seen else "it does not exist"
            raise DistTimeout(f"waited {t:g} s for rank 0 to finish the stages before PPO: {path} should name "
                              f"this launch {me!r}, {found} (did rank 0 fail? RLHF_READY_TIMEOUT_S sets the wait)")
        time.sleep(poll_s)


def from_env() -> Dist:
    rank, world, local = env_world()
    return Dist(rank=rank, world=world, local_rank=local)


def shard(items: list, d: Optional[Dist]) -> list:
    """This rank's share of a global list (every W-th item, from its rank)."""
    if d is None or d.world <= 1:
        return items
    return items[d.rank::d.world]
