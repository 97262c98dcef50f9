"""Rewards from inside or outside the run, behind one interface.

A reward is a :class:`RewardFn`: ``reward(prompts, responses) -> torch.Tensor`` (one float per
pair, on the CPU). PPO (``ppo.reward``) and the eval's gold path (``gold_rm``) name it with
the same spec, read by the one parser :func:`parse_reward_spec` (``rlhf/reward_spec.py``,
which the config imports without the models):

* ``rm``: the run's own reward model (``<run>/rm``, the default; PPO keeps scoring it on its
  own token sequence, ``rlhf.ppo.score_rollout``);
* ``rm:<path>``: a reward model this harness trained elsewhere (a scalar head), read by
  ``rlhf.reward.score_texts`` with its own tokenizer (:class:`RMReward`);
* ``classifier``: the run's own sentiment/label classifier (``<run>/classifier``, the
  classifier stage: ``rlhf/classifier.py``), read like ``hf:``;
* ``hf:<folder or hub name>``: any Hugging Face sequence classifier with its own tokenizer
  (:class:`HFClassifierReward`): the response (or prompt + response: ``input``) is
  re-tokenised for it, and ``label`` picks what of its logits is the reward
  (:func:`parse_label_choice`);
* ``py:<module>:<function>``: a Python function ``f(prompts, responses) -> list of floats``
  (:class:`PyReward`), imported from ``sys.path`` and the working directory.

Outside rewards (``hf``/``classifier``/``py``) read the decoded response without the
tokenizer's EOS text (``Samples.bodies``); a reward model reads it with the EOS text
(``Samples.texts``), as in its training. Nothing here sets ``trust_remote_code`` or unpickles.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import ConfigError, SourceError

from .reward_spec import INPUTS, KINDS, RewardSpec, parse_reward_spec  # noqa: F401 - the one parser


# ----------------------------------------------------------------------------- label choice

@dataclass(frozen=True)
class LabelChoice:
    """Which of a classifier's logits z is the reward: ``logit`` z_a, ``prob`` softmax(z)_a,
    or ``diff`` z_a - z_b (labels as indices)."""

    kind: str
    a: int
    b: int = -1

    def apply(self, logits: "torch.Tensor") -> "torch.Tensor":
        """(B, L) logits -> (B,) rewards:

            logit: r = z_a        prob: r = exp(z_a) / Σ_j exp(z_j)        diff: r = z_a - z_b
        """
        import torch
        z = logits.float()
        if self.kind == "logit":
            return z[:, self.a]
        if self.kind == "prob":
            return torch.softmax(z, -1)[:, self.a]
        return z[:, self.a] - z[:, self.b]


def _label_index(name: str, id2label: dict, key: str) -> int:
    n = len(id2label)
    names = {str(v).lower(): int(k) for k, v in id2label.items()}
    t = name.strip()
    if t.lower() in names:
        return names[t.lower()]
    try:
        i = int(t)
    except ValueError:
        raise ConfigError(f"{key}: the classifier has no label {t!r} (labels: "
                          f"{', '.join(f'{k}={v}' for k, v in sorted(id2label.items()))})") from None
    if not 0 <= i < n:
        raise ConfigError(f"{key}: label index {i} is out of range: the classifier has {n} labels")
    return i


def parse_label_choice(text: str, id2label: dict, key: str = "ppo.reward_label") -> LabelChoice:
    """``text`` -> :class:`LabelChoice` for a classifier with labels ``id2label`` ({index: name}):
    ``""`` (a one-label model: its logit), ``X`` or ``logit:X``, ``prob:X``, ``diff:X,Y``, where
    X, Y are label names (case-insensitive) or indices."""
    id2label = {int(k): v for k, v in id2label.items()}
    t = (text or "").strip()
    if not t:
        if len(id2label) == 1:
            return LabelChoice("logit", 0)
        raise ConfigError(f"{key}: the classifier has {len(id2label)} labels "
                          f"({', '.join(f'{k}={v}' for k, v in sorted(id2label.items()))}): say which is the reward, "
                          f"e.g. {key}=POSITIVE, prob:POSITIVE or diff:POSITIVE,NEGATIVE")
    kind, sep, rest = t.partition(":")
    if not sep:
        kind, rest = "logit", t
    if kind not in ("logit", "prob", "diff"):
        raise ConfigError(f"{key}={text!r}: expected <label>, logit:<label>, prob:<label> or diff:<label>,<label>")
    if kind == "diff":
        parts = rest.split(",")
        if len(parts) != 2:
            raise ConfigError(f"{key}={text!r}: diff needs two labels, diff:<label>,<label>")
        return LabelChoice("diff", _label_index(parts[0], id2label, key), _label_index(parts[1], id2label, key))
    return LabelChoice(kind, _label_index(rest, id2label, key))


# ----------------------------------------------------------------------------- the interface

class RewardFn:
    """``reward(prompts, responses)`` -> one float per (prompt, response), a CPU tensor."""

    name: str = "reward"
    reads_eos_text: bool = False  # reward models read the EOS text (as trained); outside rewards do not

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> "torch.Tensor":
        raise NotImplementedError

    def of_samples(self, s) -> "torch.Tensor":
        """The reward of every row of ``s`` (``rlhf.sampling.Samples``): its prompt and its
        decoded response, with the EOS text for a reward model and without it otherwise."""
        return self(s.prompts, s.texts if self.reads_eos_text else s.bodies)


class RMReward(RewardFn):
    """A reward model (scalar head) read by ``rlhf.reward.score_texts``, the RM instrument."""

    reads_eos_text = True

    def __init__(self, model, tokenizer, max_len: int, name: str = "rm"):
        self.model, self.tokenizer, self.max_len, self.name = model, tokenizer, max_len, name
        self.policy_tokenizer, self.raw_prompts = None, {}

    def for_policy(self, policy_tokenizer, raw_prompts: dict) -> "RMReward":
        """Read a policy's samples whose tokenizer may differ from this model's: each (prompt
        text, response text) written for ``policy_tokenizer`` is re-written for this model's
        own tokenizer and chat template (``rlhf.chat.gold_sequence``), from the raw prompt
        that ``raw_prompts`` maps each prompt text back to (a prompt text missing from it is
        taken as raw). With one tokenizer for both, the texts are unchanged."""
        self.policy_tokenizer, self.raw_prompts = policy_tokenizer, dict(raw_prompts)
        return self

    def __call__(self, prompts, responses):
        from .reward import score_texts
        prompts, responses = list(prompts), list(responses)
        if self.policy_tokenizer is not None:
            from .chat import gold_sequence
            pairs = [gold_sequence(self.policy_tokenizer, self.tokenizer, self.raw_prompts.get(p, p), r)
                     for p, r in zip(prompts, responses)]
            prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
        return score_texts(self.model, self.tokenizer, prompts, responses, self.max_len).float().cpu()


def classifier_logits(model, tokenizer, texts: Sequence[str], max_len: int, batch_size: int = 32) -> "torch.Tensor":
    """(N, labels) logits of a sequence classifier through its own forward: each text
    tokenised by its own tokenizer (special tokens added as it was trained, right padding,
    cut to ``max_len`` tokens from the left, as the reward model's sequences are: the end of
    a response, and of a review, where its verdict usually is, is kept). The one reading of a
    classifier: the classifier stage's training and accuracy and every classifier reward."""
    import torch
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            out.append(classifier_forward(model, tokenizer, texts[i:i + batch_size], max_len, device).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)


def classifier_forward(model, tokenizer, texts: Sequence[str], max_len: int, device) -> "torch.Tensor":
    """The logits (B, labels) of one batch, with gradients when the model trains."""
    from .models import tokenizer_sides
    with tokenizer_sides(tokenizer, padding="right", truncation="left"):
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_len)
    return model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits


def load_classifier(path: str, dtype: str = "float32", device=None):
    """(model, tokenizer) of a Hugging Face sequence classifier (a folder or hub name; no
    remote code), eval mode, frozen. A model with no pad token gets its EOS as pad."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from .models import DTYPES, no_dropout, resolve_source
    where = resolve_source(path)
    try:
        tok = AutoTokenizer.from_pretrained(where)
        model = AutoModelForSequenceClassification.from_pretrained(where, dtype=DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load a sequence classifier from {path!r}: {e}") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise SourceError(f"the classifier {path!r} has neither a pad nor an EOS token to pad batches with")
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model = no_dropout(model).eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model, tok


class HFClassifierReward(RewardFn):
    """A Hugging Face sequence classifier: the response (``input="response"``) or
    ``prompt + " " + response`` re-tokenised by its own tokenizer, its logits read by
    :func:`classifier_logits`, and the reward chosen by ``label`` (:func:`parse_label_choice`)."""

    def __init__(self, model, tokenizer, label: LabelChoice, input: str = "response", max_len: int = 512,
                 name: str = "hf"):
        if input not in INPUTS:
            raise ConfigError(f"reward input {input!r}: expected one of {', '.join(INPUTS)}")
        self.model, self.tokenizer, self.label, self.input, self.name = model, tokenizer, label, input, name
        n_ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.max_len = min(max_len, n_ctx) if n_ctx else max_len

    def texts(self, prompts, responses) -> list[str]:
        if self.input == "response":
            return list(responses)
        return [p + " " + r for p, r in zip(prompts, responses)]

    def __call__(self, prompts, responses):
        return self.label.apply(classifier_logits(self.model, self.tokenizer, self.texts(prompts, responses),
                                                  self.max_len))


class PyReward(RewardFn):
    """A Python function ``f(prompts: list[str], responses: list[str]) -> list[float]``; what
    it returns is checked (one finite number per pair) on every call."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def __call__(self, prompts, responses):
        import torch
        prompts, responses = list(prompts), list(responses)
        out = self.fn(prompts, responses)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().flatten().tolist()
        elif hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # a numpy array
            out = out.tolist()
        if not isinstance(out, (list, tuple)):
            raise ConfigError(f"reward {self.name}: returned {type(out).__name__}, expected a list of floats "
                              f"(one per response)")
        if len(out) != len(responses):
            raise ConfigError(f"reward {self.name}: returned {len(out)} values for {len(responses)} responses")
        bad = [(i, v) for i, v in enumerate(out)
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v))]
        if bad:
            i, v = bad[0]
            raise ConfigError(f"reward {self.name}: value {i} is {v!r}: expected a finite number "
                              f"({len(bad)} bad of {len(out)})")
        return torch.tensor([float(v) for v in out], dtype=torch.float32)


def import_function(target: str, key: str = "ppo.reward"):
    """The function ``module:function`` names, imported from ``sys.path`` and the working
    directory; a missing module or function (or one that is not callable) is a ConfigError."""
    mod_name, _, fn_name = target.rpartition(":")
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise ConfigError(f"{key}=py:{target}: no module named {mod_name!r} (looked in sys.path and {cwd})") \
                from None
        raise ConfigError(f"{key}=py:{target}: importing {mod_name!r} failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed on import
        raise ConfigError(f"{key}=py:{target}: importing {mod_name!r} failed: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ConfigError(f"{key}=py:{target}: module {mod_name!r} ({getattr(module, '__file__', '?')}) has no "
                          f"{fn_name!r}")
    if not callable(fn):
        raise ConfigError(f"{key}=py:{target}: {fn_name!r} is a {type(fn).__name__}, not a function")
    return fn


def check_reward_spec(spec: RewardSpec, key: str = "ppo.reward") -> None:
    """What can be checked before any compute: a py: function imports, a folder given to
    rm:/hf: exists (a hub name is checked when loaded)."""
    if spec.kind == "py":
        import_function(spec.target, key)
    elif spec.kind in ("rm", "hf") and spec.target:
        from .models import resolve_source
        try:
            resolve_source(spec.target)
        except SourceError as e:
            raise ConfigError(f"{key}={spec}: {e}") from None


def load_reward(spec: RewardSpec, run_dir: Optional[Path] = None, label: str = "", input: str = "response",
                dtype: str = "float32", device=None, max_len: int = 512, key: str = "ppo.reward",
                label_key: str = "ppo.reward_label", tokenizer=None) -> RewardFn:
    """The :class:`RewardFn` a spec names. ``run_dir`` resolves ``rm`` and ``classifier`` (the
    run's stages); ``label`` and ``input`` apply to classifiers only; ``max_len``: the most
    tokens it reads (``rm.max_length``; ``classifier.max_length`` for the run's classifier, as
    it was trained); ``tokenizer``: the run's tokenizer for its own reward model (else the
    one saved with it)."""
    if spec.kind == "py":
        return PyReward(import_function(spec.target, key), f"py:{spec.target}")
    if spec.kind in ("rm", "classifier") and not spec.target:
        if run_dir is None:
            raise ConfigError(f"{key}={spec}: the run's own {spec.kind} needs a run directory")
        path = str(Path(run_dir) / spec.kind)
        if not (Path(path) / "config.json").exists():
            stage = "rm" if spec.kind == "rm" else "classifier"
            raise ConfigError(f"{key}={spec}: {path} holds no model: add '{stage}' to stages")
    else:
        path = spec.target
    if spec.kind == "rm":
        from .models import load_reward_model, load_tokenizer
        from .reward import rm_max_length
        try:
            model = load_reward_model(path, dtype, device).eval().requires_grad_(False)
            tok = tokenizer if tokenizer is not None else load_tokenizer(path)
        except Exception as e:  # noqa: BLE001 - any load failure names the spec
            raise ConfigError(f"{key}={spec}: not a loadable reward model: {e}") from None
        return RMReward(model, tok, rm_max_length(model, max_len), name=str(spec))
    model, tok = load_classifier(path, dtype, device)
    return HFClassifierReward(model, tok, parse_label_choice(label, model.config.id2label, label_key), input,
                              max_len, name=str(spec))
