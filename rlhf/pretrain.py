"""Stage 1: pretrain a small GPT-2 from scratch on the toy corpus (a nanoGPT-style loop).

Each step: a batch of random windows, the next-token loss, its backward, a gradient-norm clip
and an AdamW step (torch's fused kernel, called directly: ``rlhf/optim.py``). The toy GPT-2's
forward runs through ``rlhf.gpt2`` (transformers' forward's floats without its per-call
machinery: the same loss; one gradient, the position embedding's, rounds differently). On a
CPU with ``threads`` >= 2 the batch's two halves take their forward and backward side by side,
each on its own thread (``rlhf/threads.py``), and their gradients are added: the gradient of
the whole batch's mean loss, its sums in another order than one backward over the whole batch
(as another thread count would), deterministic at a given thread count. How much that gains
over two intra-op threads inside each kernel varies with this machine's load:
``bench/speed_ideas.py`` measures both side by side."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Iterator, Optional

import torch
from tqdm.auto import tqdm

from . import gpt2, tracking
from .config import DataError, RunConfig, stage_seed
from .errors import check_finite
from .heldout import heldout_nll, heldout_text
from .losses import lm_loss
from .models import autocast, lm_forward, n_params, native_bf16, save_hf, scratch_model
from .optim import AdamW
from .rundir import RunDir
from .sampling import probe_world
from .threads import SideThread
from .world import World


def encode_corpus(tokenizer, docs: list[str]) -> torch.Tensor:
    """Documents concatenated into one token stream. The corpus never contains EOS: a
    pretrained model never ends its answer, the demonstrations teach it to."""
    text = " ".join(docs)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError("the pretraining corpus is empty")
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    if len(stream) <= seq_len:
        raise DataError(f"the corpus has {len(stream)} tokens, fewer than pretrain.seq_len={seq_len}")
    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=gen)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def next_token_loss(model, x: torch.Tensor, kind: str = "none") -> torch.Tensor:
    """The mean next-token loss (``losses.lm_loss``) of ``model`` on the windows ``x``, its
    forward (``models.lm_forward``: a plain GPT-2 through ``rlhf.gpt2``, the same loss as its
    own forward, the position embedding's gradient rounded differently) in
    ``pretrain.autocast`` ``kind``."""
    with autocast(x.device, kind):
        logits, _ = lm_forward(model, x, torch.ones_like(x))
    return lm_loss(logits, x)


def share_grads(model, params: list, x: torch.Tensor, share: float, kind: str) -> tuple[list, torch.Tensor]:
    """The gradients of ``share`` x the mean next-token loss on ``x`` (a part of the batch),
    returned rather than accumulated into ``.grad`` (another thread may be computing the other
    part's), and that loss, detached."""
    loss = next_token_loss(model, x, kind)
    return list(torch.autograd.grad(share * loss, params)), loss.detach()


def backward_in_halves(model, params: list, x: torch.Tensor, side: SideThread, kind: str) -> torch.Tensor:
    """The whole batch's mean loss and its gradients in ``.grad``, the two halves' forwards
    and backwards side by side (this thread and ``side``'s), their gradients added in a fixed
    order: the gradient of (n_a·L_a + n_b·L_b) / n, the batch's mean loss. Returns that loss."""
    n = x.shape[0]
    h = n // 2
    with side.alongside(share_grads, model, params, x[h:], (n - h) / n, kind) as other:
        ga, la = share_grads(model, params, x[:h], h / n, kind)
        gb, lb = other()
    for p, a, b in zip(params, ga, gb):
        p.grad = a + b
    return (h * la + (n - h) * lb) / n


@contextlib.contextmanager
def halves_thread(model, device: torch.device, batch_size: int) -> Iterator[Optional[SideThread]]:
    """The thread for the batch's second half, and this thread at its share of the threads,
    for the block: on a CPU with ``threads`` >= 2, for a model that draws no random numbers in
    its forward (no active dropout: the lean GPT-2 path's condition, ``gpt2.eligible``);
    else None (the whole batch on this thread, at all its threads)."""
    if not (device.type == "cpu" and torch.get_num_threads() >= 2 and batch_size >= 2 and gpt2.eligible(model)):
        yield None
        return
    side = SideThread(torch.get_num_threads(), name="pretrain-half")
    try:
        with side.split():
            yield side
    finally:
        side.close()


def run_pretrain(cfg: RunConfig, rd: RunDir, world: World, tokenizer, device: torch.device) -> dict:
    pc = cfg.pretrain
    out = rd.begin_stage("pretrain")
    torch.manual_seed(stage_seed(cfg.seed, "pretrain"))
    gen = torch.Generator().manual_seed(stage_seed(cfg.seed, "pretrain"))
    model = scratch_model(cfg.model, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id).to(device)
    train = encode_corpus(tokenizer, world.corpus())
    print(f"[pretrain] GPT-2 with {n_params(model):,} parameters, {len(train):,} corpus tokens, "
          f"{pc.steps} steps of {pc.batch_size}x{pc.seq_len}")
    if pc.autocast == "bf16" and native_bf16(device) is False:
        print(f"[pretrain] warning: pretrain.autocast=bf16 on a {device.type} without native bf16 arithmetic "
              "(no AVX512-BF16/AMX flag): slower than pretrain.autocast=none there", file=sys.stderr)
    params = list(model.parameters())
    opt = AdamW(params, lr=pc.lr, weight_decay=pc.weight_decay, betas=(0.9, 0.95))
    model.train()
    t0 = time.time()
    bar = tqdm(range(pc.steps), desc="pretrain", mininterval=2.0)
    loss_ema = None
    with halves_thread(model, device, pc.batch_size) as side:  # None: the whole batch on this thread
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, pc.steps, pc.warmup_steps, pc.lr)
            x = random_windows(train, pc.batch_size, pc.seq_len, gen).to(device)
            opt.zero_grad(set_to_none=True)
            if side is None:
                loss = next_token_loss(model, x, pc.autocast)  # pretrain.autocast; the loss is float32
                loss.backward()
            else:
                loss = backward_in_halves(model, params, x, side, pc.autocast)
            check_finite("pretrain loss", loss, step)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
            if step % 50 == 0 or step == pc.steps - 1:
                bar.set_postfix(loss=f"{loss_ema:.3f}")
                row = {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"], "time_s": time.time() - t0}
                tracking.metrics(out / "metrics.jsonl", row)
    model.config.rlhf_train_window = pc.seq_len  # the held-out loss never reads untrained positions
    hl = heldout_nll(model, tokenizer, heldout_text(world.heldout_corpus()))["loss"]
    probe = probe_world(model, tokenizer, world)
    save_hf(model, tokenizer, out)
    summary = {"heldout_loss": hl, "heldout_ppl": math.exp(hl), "train_loss_ema": loss_ema,
               "n_params": n_params(model), "time_s": time.time() - t0, "corpus_tokens": len(train), **probe}
    print(f"[pretrain] held-out loss {hl:.3f}; on myth facts the LM states the myth "
          f"{probe['myth_facts_states_myth']:.0%} and the truth {probe['myth_facts_states_truth']:.0%} of the time; "
          f"truth on other facts {probe['other_facts_states_truth']:.0%}; answers ended {probe['answers_ended']:.0%}")
    return summary
