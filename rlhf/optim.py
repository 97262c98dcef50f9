"""The PPO optimiser: torch's fused AdamW, stepped without its per-call Python.

``torch.optim.AdamW(fused=True).step`` spends most of a small model's step outside its
kernel: the wrapper that runs hooks and profiler marks, grad-mode wrappers, state checks and
grouping the tensors by device and dtype on every call (about 0.3 ms against 0.07 ms for the kernel on the toy policy's 28
tensors, and PPO steps two optimisers per minibatch). :class:`AdamW` calls the same
kernel (``torch._fused_adamw_``) with the same arguments once its state exists and every
parameter has a gradient, so the parameters and the state come out bit for bit the same (``tests/test_optim.py``); its
``state_dict`` is torch's. Anything else (the first step, which creates the state; DTensor
or sparse gradients; mixed devices or dtypes; hooks; a GradScaler; a closure) takes torch's
own step.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW(..., fused=True)`` with a direct step (see the module docstring)
    and a ``zero_grad`` that sets each gradient to None without torch's profiling wrapper."""

    def __init__(self, params, lr: float, eps: float = 1e-8, weight_decay: float = 0.0, betas=(0.9, 0.999)):
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, betas=betas, fused=True)

    def _direct_groups(self):
        """Per param group, (group, params, exp_avgs, exp_avg_sqs, steps) for the fused
        kernel; None where torch's step must run. The lists are checked once and kept until
        the state or the param groups change (a load_state_dict replaces the state)."""
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _global_optimizer_pre_hooks
                or _global_optimizer_post_hooks or getattr(self, "grad_scale", None) is not None
                or getattr(self, "found_inf", None) is not None):  # (a GradScaler's)
            return None
        key = (self.state, len(self.state), [len(g["params"]) for g in self.param_groups])
        cached = getattr(self, "_direct", None)
        if cached is None or cached[0][0] is not key[0] or cached[0][1:] != key[1:]:
            cached = self._direct = (key, self._check_groups())
        groups = cached[1]
        if groups is None:
            return None
        for _, ps, _, _, _ in groups:
            for p in ps:
                if type(p.grad) is not torch.Tensor or p.grad.layout is not torch.strided:  # None, DTensor, sparse
                    return None
        return groups

    def _check_groups(self):
        out = []
        for g in self.param_groups:
            if (g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"] or not g["fused"]
                    or isinstance(g["lr"], torch.Tensor)):
                return None
            ps = list(g["params"])
            if not ps:
                continue
            dev, dt = ps[0].device, ps[0].dtype
            state = [self.state.get(p) for p in ps]
            if any(st is None or p.device != dev or p.dtype != dt or type(p.data) is not torch.Tensor
                   for p, st in zip(ps, state)):
                return None
            out.append((g, ps, [st["exp_avg"] for st in state], [st["exp_avg_sq"] for st in state],
                        [st["step"] for st in state]))
        return out

    @torch.no_grad()
    def step(self, closure=None):
        groups = self._direct_groups() if closure is None else None
        if groups is None:
            return super().step(closure)
        for g, ps, exp_avgs, exp_avg_sqs, steps in groups:
            torch._foreach_add_(steps, 1)
            beta1, beta2 = g["betas"]
            torch._fused_adamw_(ps, [p.grad for p in ps], exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                                lr=g["lr"], beta1=beta1, beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"],
                                maximize=False, grad_scale=None, found_inf=None)
        return None

    step.hooked = True  # torch would wrap it in its hook-running, profiling wrapper: torch's step has it

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none)
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None
