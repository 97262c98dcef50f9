"""Each loss against numbers computed by hand (the comments show the arithmetic)."""

import math

import pytest
import torch

from rlhf import losses as L


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------- InstructGPT eq. 1
def test_ranking_loss_k2():
    # -log σ(1 - 0) = log(1 + e^-1)
    assert L.kwise_ranking_loss(t(1.0, 0.0).unsqueeze(0)).item() == pytest.approx(0.31326168751822286, abs=1e-12)


def test_ranking_loss_k3():
    # pairs (2,1), (2,0), (1,0): [2·log(1+e^-1) + log(1+e^-2)] / 3
    assert L.kwise_ranking_loss(t(2.0, 1.0, 0.0).unsqueeze(0)).item() == pytest.approx(0.25115046202647273, abs=1e-12)


def test_ranking_loss_k4_with_disagreements():
    # labeler order best first, rewards 0, 1, -1, 0.5: differences r_i - r_j (i<j) are
    # -1, 1, -0.5, 2, 0.5, -1.5; mean of log(1 + e^-d) over the 6 pairs
    r = t(0.0, 1.0, -1.0, 0.5).unsqueeze(0)
    assert L.kwise_ranking_loss(r).item() == pytest.approx(0.8171697720703973, abs=1e-12)
    assert L.pairwise_accuracy(r) == (3, 6)


def test_ranking_loss_batch_mean_and_padding():
    a = L.kwise_ranking_loss(t(1.0, 0.0).unsqueeze(0))
    b = L.kwise_ranking_loss(t(2.0, 1.0, 0.0).unsqueeze(0))
    # a K=2 row padded to K=3 counts only its one pair
    r = torch.stack([t(1.0, 0.0, 99.0), t(2.0, 1.0, 0.0)])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert L.kwise_ranking_loss(r, valid).item() == pytest.approx((a.item() + b.item()) / 2, abs=1e-12)


def test_ranking_loss_one_forward_per_response_gradient():
    r = t(0.3, -0.2, 0.1).requires_grad_()
    L.kwise_ranking_loss(r.unsqueeze(0)).backward()
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # d/dr_0 of -(1/3)[log σ(r0-r1) + log σ(r0-r2) + log σ(r1-r2)]
    g0 = -(1 - s(0.5) + 1 - s(0.2)) / 3
    assert r.grad[0].item() == pytest.approx(g0, abs=1e-12)


# ------------------------------------------------------------------- PPO surrogate
@pytest.mark.parametrize("ratio,adv,expected_obj,clipped", [
    (1.1, 2.0, 2.2, False),    # inside [0.8, 1.2]: ρA
    (1.5, 2.0, 2.4, True),     # A>0, ρ>1+ε: (1+ε)A = 1.2·2
    (0.5, 2.0, 1.0, False),    # A>0, ρ<1-ε: min(0.5·2, 0.8·2) = 1.0, the unclipped term
    (0.9, -1.0, -0.9, False),  # inside, A<0
    (1.5, -1.0, -1.5, False),  # A<0, ρ>1+ε: min(-1.5, -1.2) = -1.5, unclipped
    (0.5, -1.0, -0.8, True),   # A<0, ρ<1-ε: (1-ε)A = -0.8
])
def test_clipped_surrogate(ratio, adv, expected_obj, clipped):
    old = t(-1.0)
    new = old + math.log(ratio)
    loss, st = L.ppo_clip_loss(new, old, t(adv), t(1.0), clip_eps=0.2)
    assert loss.item() == pytest.approx(-expected_obj, abs=1e-9)
    assert st["clipfrac"].item() == (1.0 if clipped else 0.0)


def test_unclipped_surrogate_when_eps_none():
    loss, _ = L.ppo_clip_loss(t(math.log(1.5)), t(0.0), t(2.0), t(1.0), clip_eps=None)
    assert loss.item() == pytest.approx(-3.0)


def test_surrogate_ignores_padding():
    loss, _ = L.ppo_clip_loss(t(0.0, 5.0), t(0.0, 0.0), t(1.0, 100.0), t(1.0, 0.0), clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.0)


# --------------------------------------------------------------- KL penalty, GAE
def test_per_token_kl_penalty():
    logp = t(-1.0, -2.0, -0.5).unsqueeze(0)
    ref = t(-1.5, -1.0, -0.5).unsqueeze(0)
    # kl = logp - ref = [0.5, -1, 0]; r_t = -0.1·kl; the RM score 2 goes on the last token
    r, kl = L.kl_penalised_rewards(t(2.0), logp, ref, t(1, 1, 1).unsqueeze(0), beta=0.1)
    assert r[0].tolist() == pytest.approx([-0.05, 0.1, 2.0])
    assert kl[0].tolist() == pytest.approx([0.5, -1.0, 0.0])
    # a response that ended one token earlier (right padding): score on token 1
    r, _ = L.kl_penalised_rewards(t(2.0), logp, ref, t(1, 1, 0).unsqueeze(0), beta=0.1)
    assert r[0].tolist() == pytest.approx([-0.05, 2.1, 0.0])
    r0, _ = L.kl_penalised_rewards(t(2.0), logp, ref, t(1, 1, 1).unsqueeze(0), beta=0.0)
    assert r0[0].tolist() == pytest.approx([0.0, 0.0, 2.0])


def test_gae_three_steps():
    # γ=0.9, λ=0.8, r=[0,0,1], V=[0.5,0.6,0.7]
    # δ2 = 1 - 0.7 = 0.3                 A2 = 0.3
    # δ1 = 0.9·0.7 - 0.6 = 0.03          A1 = 0.03 + 0.72·0.3 = 0.246
    # δ0 = 0.9·0.6 - 0.5 = 0.04          A0 = 0.04 + 0.72·0.246 = 0.21712
    adv, ret = L.gae(t(0, 0, 1).unsqueeze(0), t(0.5, 0.6, 0.7).unsqueeze(0), t(1, 1, 1).unsqueeze(0), 0.9, 0.8)
    assert adv[0].tolist() == pytest.approx([0.21712, 0.246, 0.3])
    assert ret[0].tolist() == pytest.approx([0.71712, 0.846, 1.0])


def test_gae_stops_at_padding():
    # episode of 2 tokens padded to 3: the padded value must not leak in
    adv, _ = L.gae(t(0, 1, 0).unsqueeze(0), t(0.5, 0.6, 9.0).unsqueeze(0), t(1, 1, 0).unsqueeze(0), 1.0, 1.0)
    # A1 = 1 - 0.6 = 0.4; A0 = 0.6 - 0.5 + 0.4 = 0.5
    assert adv[0].tolist() == pytest.approx([0.5, 0.4, 0.0])


def _gae_step_by_step(rewards, values, mask, gamma, lam):
    """The textbook loop: δ_t and A_t together, one step at a time (gae's reference)."""
    B, T = rewards.shape
    m = mask.to(rewards.dtype)
    adv, last = torch.zeros_like(rewards), torch.zeros(B)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] * m[:, t + 1] if t + 1 < T else torch.zeros(B)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last * (m[:, t + 1] if t + 1 < T else 0.0)
        adv[:, t] = last * m[:, t]
    return adv, (adv + values) * m


def test_gae_gives_the_step_by_step_loops_floats_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for B, T in ((1, 1), (3, 7), (8, 32)):
        r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
        mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=g)).float()
        for gamma, lam in ((1.0, 0.95), (0.99, 0.9), (0.9, 0.0)):
            a, ret = L.gae(r, v * mask, mask, gamma, lam)
            a0, ret0 = _gae_step_by_step(r, v * mask, mask, gamma, lam)
            assert torch.equal(a, a0) and torch.equal(ret, ret0)
    assert L.gae(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 0), 1.0, 0.95)[0].shape == (2, 0)


def test_value_loss_clipped():
    # V_clip = 0.5 + clip(0.5, ±0.2) = 0.7; max((1-2)², (0.7-2)²) = 1.69; ½·1.69
    loss, frac = L.value_loss(t(1.0), t(0.5), t(2.0), t(1.0), clip=0.2)
    assert loss.item() == pytest.approx(0.845)
    assert frac.item() == 1.0
    loss, _ = L.value_loss(t(1.0), t(0.5), t(2.0), t(1.0), clip=None)
    assert loss.item() == pytest.approx(0.5)


def test_whiten():
    x = t(1.0, 2.0, 3.0, 100.0)
    w = L.masked_whiten(x, t(1, 1, 1, 0))
    # mean 2, var 2/3 over the first three
    assert w.tolist()[:3] == pytest.approx([-1.2247448, 0.0, 1.2247448], abs=1e-6)
    assert w[3].item() == 0.0


def test_lm_loss_hand():
    # vocab 2, uniform logits: every next-token loss is log 2
    logits = torch.zeros(1, 3, 2)
    assert L.lm_loss(logits, torch.tensor([[0, 1, 0]])).item() == pytest.approx(math.log(2))


def test_best_of_n_kl():
    assert L.best_of_n_kl(1) == 0.0
    assert L.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert L.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_adaptive_kl_controller():
    c = L.AdaptiveKLController(0.1, target=1.0, horizon=100)
    # KL = 3 → error clipped to +0.2; β ← 0.1·(1 + 0.2·10/100) = 0.102
    assert c.update(3.0, 10) == pytest.approx(0.102)
    # KL = 0.9 → error -0.1; β ← 0.102·(1 - 0.1·10/100)
    assert c.update(0.9, 10) == pytest.approx(0.102 * 0.99)
    assert L.FixedKLController(0.0).update(100.0, 10) == 0.0


def test_entropy_and_logprobs():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert L.entropy_from_logits(logits).item() == pytest.approx(1.5 * math.log(2))
    assert L.logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))


def test_logprobs_and_entropy_at_a_temperature_by_hand():
    # p = (1/2, 1/4, 1/4); at τ = 2 the distribution is ∝ p^(1/2) = (1/√2, 1/2, 1/2), sum 1/√2 + 1
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    z = 2 ** -0.5 + 1.0
    q = [2 ** -0.5 / z, 0.5 / z, 0.5 / z]
    assert L.logprobs_from_logits(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(math.log(q[1]))
    assert L.entropy_from_logits(logits, temperature=2.0).item() == pytest.approx(-sum(x * math.log(x) for x in q))


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_and_entropy_match_the_log_softmax_forms(chunk, dtype):
    """gather - logsumexp, chunked over positions, equals log_softmax + gather (values and
    gradients), and the entropy equals -Σ p log p, for float32 and bf16 logits."""
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 7, 50, generator=g)).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 50, (3, 7), generator=g)
    for tau in (1.0, 0.7):
        z = logits.float() / tau
        want = torch.log_softmax(z, -1).gather(2, tokens.unsqueeze(-1)).squeeze(-1)
        got = L.logprobs_from_logits(logits, tokens, tau, chunk=chunk)
        assert got.dtype == torch.float32 and got.shape == (3, 7)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
        (gw,) = torch.autograd.grad(want.sum(), logits)
        (gg,) = torch.autograd.grad(got.sum(), logits)
        assert torch.allclose(gg.float(), gw.float(), atol=1e-5)
        with torch.no_grad():
            lp = torch.log_softmax(z, -1)
            assert torch.allclose(L.entropy_from_logits(logits, tau, chunk=chunk), -(lp.exp() * lp).sum(-1), atol=1e-5)
