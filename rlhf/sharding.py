"""Sharded PPO (``ppo.sharding=fsdp``): PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``)
for the policy, its value head, the critic and the frozen reference, when a model does not
fit on one device as a full replica with its gradients and optimiser states.

Under a launcher (``rlhf/dist.py``) each of the W ranks then keeps 1/W of every weight, of
its gradient and of AdamW's two moments (a ``DTensor`` sharded on dim 0); a forward pass
all-gathers each transformer block's weights just before it runs and frees them after,
and a backward pass reduce-scatters the gradients, which averages them over ranks as the
replicated path's :meth:`Dist.average_gradients` does. Everything else in PPO is the
replicated data-parallel path unchanged: each rank samples and scores its 1/W of the
global batch, the whitening statistics and the token weights are global, so W sharded
ranks compute the one-process estimator too (``tests/test_fsdp.py``).

What is sharded and what is not:

- **Units.** Each transformer block (the classes a Hugging Face model lists in
  ``_no_split_modules``) is one FSDP unit; the rest of a causal LM (embeddings, final norm,
  the tied LM head) is the root unit. A sequence classifier (the critic) is called through
  its ``base_model`` and ``score`` head separately (``rlhf.models.sequence_scores``), so
  those two are the units above its blocks. The value head is one unit of its own.
- **The reward model stays a full replica** on every rank (frozen, in eval mode, forward
  only; it may be another architecture, and its batching depends on each rank's texts).
- **Sampling and rank-0-only passes** (the held-out loss, the final before/after probes)
  run inside :func:`gathered`: the model's full weights are all-gathered once, forwards
  then run locally, in any number (each rank's decode loop stops when its own responses
  end), and the weights are sharded again on exit. So the policy's weights alone, without
  gradients or optimiser states, must fit on one device during sampling. (FSDP2 gives the
  model a subclass of its own, so ``rlhf.sampling`` takes the model's own forward per token,
  not its lean GPT-2 step: the same draws, a little slower on tiny models.)
- **Checkpoints.** Models are gathered to rank 0 as full state dicts (on the CPU) and
  written as plain Hugging Face folders, the same as the replicated path writes (the eval
  reads them as they are); the optimisers' states stay sharded: every rank writes its own
  shard (``optim_rank<r>.pt``), and a resume with the same number of ranks loads the same
  weights, shards them the same way and continues bit for bit. Resharding a checkpoint to
  another number of ranks is not supported (nor is it on the replicated path: the ranks'
  random streams depend on their number).

FSDP2 rather than FSDP1 or accelerate: it is PyTorch's current FSDP (FSDP1's
``FullyShardedDataParallel`` wraps the model in a class of its own, so ``save_pretrained``,
``config`` and the model's own methods need unwrapping, and its flat parameters need
``use_orig_params``); FSDP2's parameters are plain ``DTensor``s on the model as it was
(``clip_grad_norm_``, the fused AdamW and ``torch.distributed.checkpoint.state_dict`` work on
them unchanged); it runs on CPUs with gloo in torch 2.13 (so it is tested here: forward,
backward's reduce-scatter, clipping, AdamW, gathering and full state dicts all work there);
and explicit ``unshard()`` / ``reshard()`` give sampling its full weights. accelerate would
add a dependency for the same calls.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import torch

from .dist import Dist, is_dtensor


def is_sharded(model: Optional[torch.nn.Module]) -> bool:
    """Whether ``model``'s parameters are FSDP shards (``shard_model`` was applied)."""
    return model is not None and any(is_dtensor(p) for p in model.parameters())


def active(sharding: str, d: Optional[Dist]) -> bool:
    """Whether PPO shards: ``ppo.sharding=fsdp`` and more than one rank in a process group.
    One process holds everything anyway, so ``fsdp`` without a launcher is the plain run."""
    return sharding == "fsdp" and d is not None and d.active and d.world > 1


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh
    import torch.distributed as td
    return init_device_mesh(device.type, (td.get_world_size(),))


def shard_model(model: torch.nn.Module, device: torch.device, parts: tuple[str, ...] = ()) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2 over all ranks: one unit per transformer block
    (``model._no_split_modules``), then the root, or, given ``parts``, those submodules
    instead of the root (the ones callers run directly, e.g. a classifier's ``base_model``
    and ``score``). Weights move to ``device`` as shards. Raises if a parameter is left
    unsharded (a mixed model would break gradient clipping)."""
    from torch.distributed.fsdp import fully_shard
    mesh = _mesh(device)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for m in list(model.modules()):
        if m is not model and type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
    if parts:
        for name in parts:
            fully_shard(getattr(model, name), mesh=mesh)
    else:
        fully_shard(model, mesh=mesh)
    plain = [n for n, p in model.named_parameters() if not is_dtensor(p)]
    if plain:
        raise RuntimeError(f"ppo.sharding=fsdp left parameters of {type(model).__name__} unsharded: {plain[:5]}")
    return model


def shard_classifier(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A sequence classifier (the critic), sharded as ``sequence_scores`` calls it."""
    return shard_model(model, device, parts=(model.base_model_prefix, "score"))


def _fsdp_modules(models) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for model in models if model is not None for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(*models: Optional[torch.nn.Module]) -> Iterator[None]:
    """Full weights of the sharded ``models`` on every rank for the block: one all-gather
    on entry (every rank must enter), then forwards are local, as many as each rank
    likes (sampling; what rank 0 runs alone); sharded again on exit. A no-op for models
    that are not sharded."""
    mods = _fsdp_modules(models)
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True)


def full_state_dict(model: torch.nn.Module, d: Dist) -> dict:
    """The full state dict of a sharded ``model`` on rank 0, as CPU tensors (``{}`` on
    other ranks; every rank must call this: it all-gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if d.is_main else {}


def save_full_hf(model: torch.nn.Module, tokenizer, directory: str | Path, d: Dist) -> None:
    """A sharded model written by rank 0 as a plain Hugging Face folder (safetensors), the
    same files ``rlhf.models.save_hf`` writes for an unsharded one. Every rank calls it."""
    sd = full_state_dict(model, d)
    if not d.is_main:
        return
    kept = {n for n, _ in model.named_parameters()}  # a tied weight (GPT-2's LM head) once, as save_hf does
    for name, _ in model.named_parameters(remove_duplicate=False):
        if name not in kept:
            sd.pop(name, None)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=sd, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


def local_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with every sharded tensor replaced by this rank's shard (plain
    tensors: loadable with ``weights_only=True``)."""
    sd = opt.state_dict()
    sd["state"] = {i: {k: (v.to_local().detach().clone() if is_dtensor(v) else v) for k, v in st.items()}
                   for i, st in sd["state"].items()}
    return sd


def load_local_optimizer_state(opt: torch.optim.Optimizer, sd: dict) -> None:
    """The inverse of :func:`local_optimizer_state` for an optimiser over the same sharded
    parameters (same model, same number of ranks): each saved shard becomes a ``DTensor``
    laid out as its parameter, then ``opt.load_state_dict``."""
    from torch.distributed.tensor import DTensor
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        row = {}
        for k, v in st.items():
            if is_dtensor(p) and torch.is_tensor(v) and v.shape == p.to_local().shape and v.dim() > 0:
                v = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False,
                                       shape=p.shape, stride=p.stride())
            row[k] = v
        state[i] = row
    opt.load_state_dict({**sd, "state": state})
