"""Pretraining regression (the alignment tax): held-out LM loss and perplexity on the
pretraining distribution, and lm-eval tasks; the suite reports each as a delta against
the run's SFT (or base) checkpoint."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics


def model_context(model) -> Optional[int]:
    c = model.config
    return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)


@torch.no_grad()
def heldout_nll(model, tokenizer, text: str, window: int = 1024, stride: int = 0, max_tokens: int = 0,
                progress: bool = True) -> dict:
    """Mean next-token NLL and perplexity of ``text`` (tokenized once, no special tokens
    added), in windows of ``window`` tokens moved by ``stride`` (0 = window): every token
    after the first is scored once, with up to window-1 tokens of context; a window only
    scores the tokens the previous one did not.

        loss = 1/N Σ_t -log p(x_t | x_{t-w+1..t-1}),   PPL = exp(loss)
    """
    model.eval()
    device = next(model.parameters()).device
    ctx = model_context(model)
    window = min(window, ctx) if ctx else window
    stride = stride or window
    if stride > window:
        raise ValueError(f"ppl_stride={stride} must be <= the window ({window})")
    if max_tokens:
        text = text[: max_tokens * 12]  # enough characters for max_tokens tokens; cut below
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if max_tokens:
        ids = ids[: max_tokens + 1]
    n = ids.shape[0]
    if n < 2:
        raise ValueError("held-out text has fewer than 2 tokens")
    nll_sum, count, prev_end = 0.0, 0, 0
    starts = list(range(0, n - 1, stride))
    for begin in tqdm(starts, desc="held-out NLL", disable=not progress, leave=False):
        end = min(begin + window, n)
        first = max(prev_end, begin + 1)  # first position scored in this window
        x = ids[begin:end].unsqueeze(0).to(device)
        logits = model(input_ids=x).logits[0, :-1].float()
        tgt = x[0, 1:]
        nll = F.cross_entropy(logits, tgt, reduction="none")
        nll = nll[first - begin - 1:]
        nll_sum += float(nll.sum())
        count += int(nll.numel())
        prev_end = end
        if end >= n:
            break
    loss = nll_sum / max(count, 1)
    return {"loss": loss, "perplexity": metrics.perplexity(nll_sum, count), "n_tokens": count,
            "window": window, "stride": stride}


def world_heldout_text(world, eos: str) -> str:
    """The toy world's held-out documents joined with the EOS token, as the pretraining
    data loader joins documents."""
    docs = world.heldout_corpus()
    return f" {eos} ".join(docs) + f" {eos}"


def delta(value: float, ref: Optional[float]) -> Optional[float]:
    if ref is None or value is None or (isinstance(ref, float) and math.isnan(ref)):
        return None
    return float(value - ref)


def lm_task_records(lm, names: Sequence[str], limit: int = 0, seed: int = 0) -> dict[str, dict]:
    """{task: {metric: value}} for lm-eval tasks (names or local YAML paths)."""
    from .lmeval import run_tasks

    res = run_tasks(lm, list(names), limit=limit or None, seed=seed)
    return {t: {"metrics": r["metrics"], "n": len(r["samples"]), "samples": r["samples"]} for t, r in res.items()}
