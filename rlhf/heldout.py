"""The one held-out language-modelling loss: the pretraining summary, PPO's
``heldout_lm_loss`` log and the regression eval (``eval/regression``) all call
:func:`heldout_nll` on :func:`heldout_text`, so they report the same number for the same
model and documents."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .models import context_length


def heldout_text(docs: Sequence[str]) -> str:
    """Held-out documents joined as pretraining joins its corpus (``rlhf.pretrain.encode_corpus``):
    with one space, no EOS between them."""
    return " ".join(docs)


def model_context(model) -> Optional[int]:
    """The longest window the held-out loss may use: the sequence length the model was
    pretrained on when this harness pretrained it (``config.rlhf_train_window``, written by
    stage 1: positions beyond it were never trained), else the model's context."""
    ctx = context_length(model)
    trained = getattr(model.config, "rlhf_train_window", None)
    return min(ctx, trained) if ctx and trained else (trained or ctx)


@torch.no_grad()
def heldout_nll(model, tokenizer, text: str, window: int = 0, stride: int = 0, max_tokens: int = 0,
                progress: bool = False, batch_size: int = 16) -> dict:
    """Mean next-token NLL and perplexity of ``text`` (tokenized once, no special tokens
    added), in windows of ``window`` tokens (0 = :func:`model_context`; capped by it) moved by
    ``stride`` (0 = window): every token after the first is scored at most once, with up
    to window-1 tokens of context; a window only scores the tokens the previous one did
    not (non-overlapping windows leave each window's first token unscored).

        loss = 1/N Σ_t -log p(x_t | x_{t-w+1..t-1}),   PPL = exp(loss)

    Windows of equal length go through the model ``batch_size`` at a time.
    Returns {"loss", "perplexity", "n_tokens", "window", "stride"}.
    """
    import math

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = model_context(model)
    window = window or ctx or 1024
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
    spans, prev_end = [], 0  # (begin, end, first position scored)
    for begin in range(0, n - 1, stride):
        end = min(begin + window, n)
        spans.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end >= n:
            break
    nll_sum, count = 0.0, 0
    try:
        i = 0
        bar = tqdm(total=len(spans), desc="held-out NLL", disable=not progress, leave=False)
        while i < len(spans):
            length = spans[i][1] - spans[i][0]
            group = [spans[i]]
            while (i + len(group) < len(spans) and len(group) < batch_size
                   and spans[i + len(group)][1] - spans[i + len(group)][0] == length):
                group.append(spans[i + len(group)])
            x = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            for row, (b, _, first) in zip(nll, group):
                part = row[first - b - 1:]
                nll_sum += float(part.double().sum())
                count += int(part.numel())
            i += len(group)
            bar.update(len(group))
        bar.close()
    finally:
        if was_training:
            model.train()
    loss = nll_sum / max(count, 1)
    return {"loss": loss, "perplexity": float(math.exp(loss)), "n_tokens": count, "window": window, "stride": stride}
