"""rlhf/optim.py: the direct fused AdamW steps bit for bit as torch's fused AdamW, its state
dict is torch's, and what it cannot do directly goes through torch's own step."""

import copy

import torch

from rlhf import optim


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


def run(m, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 8, generator=g)
        opt.zero_grad(set_to_none=True)
        m(x).pow(2).mean().backward()
        opt.step()


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_steps_bit_identical_to_torch_fused_adamw_and_resumes_from_its_state_dict():
    a, b = model(), model()
    ta = torch.optim.AdamW(a.parameters(), lr=1e-2, eps=1e-5, weight_decay=0.01, fused=True)
    ob = optim.AdamW(b.parameters(), lr=1e-2, eps=1e-5, weight_decay=0.01)
    calls = []
    direct = torch._fused_adamw_
    torch._fused_adamw_ = lambda *x, **k: calls.append(1) or direct(*x, **k)
    try:
        run(a, ta, 6)
        n_torch = len(calls)
        calls.clear()
        run(b, ob, 6)
    finally:
        torch._fused_adamw_ = direct
    assert len(calls) == n_torch == 6  # one kernel call per step on both sides
    assert same(a, b)
    for p, q in zip(a.parameters(), b.parameters()):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ta.state[p][k], ob.state[q][k])
    assert not torch.equal(model()[0].weight, b[0].weight)  # it did move
    # a torch AdamW resumed from ours, and ours from torch's, step as the uninterrupted ones
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    ta2 = torch.optim.AdamW(a2.parameters(), lr=1e-2, eps=1e-5, weight_decay=0.01, fused=True)
    ta2.load_state_dict(copy.deepcopy(ob.state_dict()))  # (as from a file: no shared tensors)
    ob2 = optim.AdamW(b2.parameters(), lr=1e-2, eps=1e-5, weight_decay=0.01)
    ob2.load_state_dict(copy.deepcopy(ta.state_dict()))
    run(a, ta, 3, seed=2)
    run(a2, ta2, 3, seed=2)
    run(b2, ob2, 3, seed=2)
    assert same(a, a2) and same(a, b2)


def test_lr_change_and_parameters_without_gradients_follow_torch():
    a, b = model(), model()
    ta = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    ob = optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    run(a, ta, 2)
    run(b, ob, 2)
    for m in (a, b):
        m[0].bias.requires_grad_(False)  # no gradient from now on: torch skips it, and so does ours
    run(a, ta, 2)
    run(b, ob, 2)
    assert same(a, b)
    for opt in (ta, ob):
        opt.param_groups[0]["lr"] = 3e-3
    run(a, ta, 2)
    run(b, ob, 2)
    assert same(a, b)


def test_falls_back_to_torch_step_with_hooks_or_a_closure():
    b = model()
    ob = optim.AdamW(b.parameters(), lr=1e-2)
    run(b, ob, 1)  # the first step creates the state (torch's step)
    assert ob._direct_groups() is not None
    seen = []
    h = ob.register_step_pre_hook(lambda o, a, k: seen.append(1))
    assert ob._direct_groups() is None
    run(b, ob, 1)
    assert seen == [1]
    h.remove()
    x = torch.randn(2, 8)

    def closure():
        ob.zero_grad()
        loss = b(x).sum()
        loss.backward()
        return loss
    assert ob.step(closure) is not None  # torch's step returns the closure's loss


def test_zero_grad_frees_the_gradients():
    b = model()
    ob = optim.AdamW(b.parameters(), lr=1e-2)
    b(torch.randn(2, 8)).sum().backward()
    ob.zero_grad()
    assert all(p.grad is None for p in b.parameters())
    b(torch.randn(2, 8)).sum().backward()
    ob.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in b.parameters())
