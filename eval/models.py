"""Loading what ``rlhf eval`` is given: checkpoints of a run, HF folders, hub names,
named sources. Wraps rlhf.models (safetensors only, no trust_remote_code)."""

from __future__ import annotations

from pathlib import Path


from rlhf import models as rm


def resolve(source: str) -> str:
    """A folder or hub name for ``from_pretrained`` (named sources such as
    ``smollm2-135m-instruct`` are converted once by ``rlhf.models``); SourceError names a bad source."""
    return rm.resolve_source(source)


def load_policy(source: str, dtype: str = "float32", device=None, tokenizer_fallback: str | Path | None = None):
    """(model, tokenizer) with left padding and a pad token."""
    path = resolve(source)
    model = rm.load_causal_lm(path, dtype=dtype, device=device)
    model.eval()
    try:
        tok = rm.load_tokenizer(path)
    except Exception:
        if tokenizer_fallback is None:
            raise
        tok = rm.load_tokenizer(str(tokenizer_fallback))
    return model, tok
