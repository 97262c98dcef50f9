"""rlhf/pretrain.py's step on two threads: the batch's two halves give the whole batch's mean
loss and its gradient (up to float rounding: sums in another order), the same bits every time;
and rlhf/threads.py's split of the threads, which a loop holds across its steps."""

import threading

import pytest
import torch

import rlhf.pretrain as pretrain
from rlhf.config import ModelConfig
from rlhf.models import scratch_model
from rlhf.threads import SideThread

V = 61


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def model(dropout: float = 0.0):
    torch.manual_seed(0)
    m = scratch_model(ModelConfig(n_layer=2, n_embd=32, n_head=4, n_positions=64), V, 0, 1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = dropout
    return m.train()


def grads(m):
    return [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("rows", [6, 5])  # 5: halves of 2 and 3 rows, weighted 2/5 and 3/5
def test_two_halves_give_the_whole_batchs_mean_loss_and_gradient(rows, two_threads, monkeypatch):
    m = model()
    params = list(m.parameters())
    x = torch.randint(2, V, (rows, 16), generator=torch.Generator().manual_seed(1))
    whole = pretrain.next_token_loss(m, x)
    whole.backward()
    g_whole = grads(m)

    where, real = [], pretrain.next_token_loss

    def spy(model, xs, kind="none"):
        where.append((threading.current_thread().name.split("_")[0], xs.shape[0]))
        return real(model, xs, kind)
    monkeypatch.setattr(pretrain, "next_token_loss", spy)
    with pretrain.halves_thread(m, torch.device("cpu"), rows) as side:
        assert side is not None and torch.get_num_threads() == 1  # the split held for the loop
        runs = []
        for _ in range(2):
            m.zero_grad(set_to_none=True)
            loss = pretrain.backward_in_halves(m, params, x, side, "none")
            runs.append((loss, grads(m)))
        assert torch.get_num_threads() == 1  # each step's alongside leaves the loop's split alone
    assert torch.get_num_threads() == 2
    assert sorted(where[:2]) == sorted([("MainThread", rows // 2), ("pretrain-half", rows - rows // 2)])
    (loss, g), (loss2, g2) = runs
    assert loss.item() == pytest.approx(whole.item(), rel=1e-6)
    for a, b in zip(g, g_whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert loss.item() == loss2.item() and all(torch.equal(a, b) for a, b in zip(g, g2))  # deterministic


def test_one_thread_or_a_model_that_draws_randomness_keeps_the_whole_batch(two_threads):
    cpu = torch.device("cpu")
    with pretrain.halves_thread(model(dropout=0.1), cpu, 8) as side:
        assert side is None and torch.get_num_threads() == 2  # dropout draws from the global RNG
    with pretrain.halves_thread(model(), cpu, 1) as side:
        assert side is None
    torch.set_num_threads(1)
    with pretrain.halves_thread(model(), cpu, 8) as side:
        assert side is None


def test_split_nests_and_alongside_runs_on_the_side_thread(two_threads):
    side = SideThread(3, name="t")
    try:
        assert (side.main_threads, side.side_threads) == (2, 1)  # an odd count: this thread gets more
        torch.set_num_threads(3)
        with side.split():
            assert torch.get_num_threads() == 2
            with side.alongside(lambda: (threading.current_thread().name.split("_")[0],
                                         torch.get_num_threads())) as result:
                assert result() == ("t", 1)
            assert torch.get_num_threads() == 2  # the inner block changed nothing
        assert torch.get_num_threads() == 3
        with side.alongside(lambda: 1) as result:  # alone: splits, then restores
            assert torch.get_num_threads() == 2 and result() == 1
        assert torch.get_num_threads() == 3
    finally:
        side.close()
