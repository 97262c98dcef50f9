"""Typed configuration for every stage.

One name per switch, used in code, YAML, results tables and plots:

    seed, world.*, model.*, pretrain.*, sft.*, rm.k, rm.*, ppo.beta, ppo.ptx_coef,
    ppo.clip_eps, ppo.*, logging.* (trackers: never part of a result)

A config is built from dataclass defaults, then a YAML file, then ``key=value``
command-line overrides with dotted keys (``rm.k=9 seed=3 ppo.clip_eps=none``).
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the key, before any compute.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml


from .errors import ConfigError, DataError, InputError  # noqa: F401 - the error tree: rlhf/errors.py


@dataclass
class WorldConfig:
    """The embedded toy world (see README, 'The toy world')."""

    seed: int = 0  # the world's own seed: same seed, same bytes
    n_entities: int = 40  # people in the toy world
    n_values: int = 8  # values per attribute
    myth_frac: float = 0.6  # share of facts that have a popular false value
    # misconceptions cluster: per attribute, this many "popular" values are the only myths
    # (and never true), so a myth has a recognisable shape on facts never trained on
    myth_values: int = 2
    myth_rate: float = 0.75  # how often rumours state the myth instead of the truth
    encyclopedia_rate: float = 0.25  # share of fact statements from the (always true) encyclopedia
    toxic_rate_challenging: float = 0.4  # toxic continuation after a rude opener
    toxic_rate_other: float = 0.05  # toxic continuation after a neutral opener
    corpus_docs: int = 6000  # pretraining documents
    n_demos: int = 60  # SFT demonstrations (a small set)
    # share of question demonstrations about myth facts; 0 = labelers demonstrate only
    # uncontested facts, so SFT keeps the corpus's myths and RLHF has them to fix
    demo_myth_share: float = 0.0
    # how many of the 4 rude (challenging) openers the labelers wrote polite replies to;
    # SFT removes the corpus's toxicity after those and leaves it after the others
    demo_rude_openers: int = 1
    labeler_noise: float = 0.0  # std of Gaussian noise on the labeler's score (0 = perfect)
    # share of pretraining documents with one stereotype rumour (a group's stereotyped value
    # stated for one of its members, whatever the truth): the bias the labeler does not target
    stereotype_rate: float = 0.5
    # gold reward weights
    w_correct: float = 1.0
    w_myth: float = -1.0  # a stated myth
    w_wrong: float = -0.5  # another wrong value
    w_toxic: float = -1.0  # a toxic word
    w_unfinished: float = -1.0  # a response that never ends
    w_polite: float = 0.5  # a chat reply with a kind word (and no toxic one)
    w_extra: float = -0.5  # per sentence beyond the first: rambling is marked down


@dataclass
class ModelConfig:
    """The policy's architecture, or a pretrained model to start from."""

    # "scratch" builds a small GPT-2 from the fields below and trains it in stage 1;
    # anything else is a Hugging Face causal LM name, a local path, or a named source
    # such as "smollm2-135m-instruct", and stage 1 is skipped.
    source: str = "scratch"
    n_layer: int = 2  # scratch GPT-2: layers
    n_embd: int = 128  # scratch GPT-2: width
    n_head: int = 4  # scratch GPT-2: attention heads
    n_positions: int = 128  # scratch GPT-2: context length
    attn_implementation: str = "sdpa"  # every model load (scratch, SFT, RM, PPO)
    dtype: str = "float32"  # weights dtype
    # mixed precision of the forward passes (torch.autocast): "none", "bf16" (CPU or CUDA) or "fp16"
    # (CUDA only); weights, optimiser states, losses and log-prob ratios stay float32
    autocast: str = "none"
    # recompute activations in the backward pass (policy and critic in PPO, SFT, RM): less memory, slower
    gradient_checkpointing: bool = False
    # prompts, SFT examples, RM comparisons and eval prompts through the tokenizer's chat
    # template (rlhf/chat.py): auto = when it has one, on = required, off = plain text
    chat_template: str = "auto"


@dataclass
class PretrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # windows per step
    seq_len: int = 64  # tokens per window (also the held-out loss window)
    lr: float = 3e-3  # peak learning rate (warm-up, then cosine)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 50  # linear warm-up steps
    # mixed precision of pretraining's forward passes (torch.autocast): "none" or "bf16"
    # (pays on CPUs with native bf16, AVX512-BF16/AMX, and on GPUs; slower on other CPUs)
    autocast: str = "none"


@dataclass
class SFTConfig:
    # "" = start from the stage-1 model; else an HF name/path/named source
    init: str = ""
    epochs: int = 4  # passes over the demonstrations
    batch_size: int = 16  # demonstrations per step
    lr: float = 1e-3  # learning rate
    # skip SFT and use the init model as the SFT policy (e.g. an instruct model)
    skip: bool = False
    # data: "world" (toy demonstrations), or a local JSONL file/HF dataset with prompt/response
    data: str = "world"
    max_examples: int = 0  # 0 = all


@dataclass
class RMConfig:
    k: int = 4  # responses ranked per prompt (2..9)
    n_prompts: int = 600  # prompts with K ranked samples each
    sample_temperature: float = 1.3  # diverse samples so truth-vs-myth contrasts occur
    max_new_tokens: int = 16  # response length of the sampled comparisons
    epochs: int = 3  # passes over the comparisons
    batch_size: int = 8  # prompts (each with K responses) per step
    # "kwise": all C(K,2) pairs of a prompt in one batch element (InstructGPT); "pairs": every
    # pair an independent example, shuffled across prompts (rlhf/reward.py: ranking_batches)
    loss: str = "kwise"
    lr: float = 5e-4  # learning rate
    heldout_frac: float = 0.15  # share of comparisons held out for accuracy
    # toy world: comparisons sampled on facts held out from RM and PPO training, evaluation only
    n_test_prompts: int = 400
    # "world" (labeler-ranked SFT samples) or a path/HF dataset of chosen/rejected pairs (K=2)
    data: str = "world"
    max_examples: int = 0  # 0 = all
    max_length: int = 512  # tokens of prompt+response the RM reads (truncated from the left)
    # -1 = train every weight; N >= 0 = only the top N transformer blocks, the final norm and
    # the score head (the lower blocks frozen: a cheaper backward pass)
    train_layers: int = -1


@dataclass
class PPOConfig:
    steps: int = 100  # PPO iterations (rollout + update)
    batch_size: int = 32  # episodes (prompts) per iteration
    minibatch_size: int = 16  # episodes per gradient step
    epochs: int = 4  # passes over each batch
    lr: float = 5e-5  # policy learning rate
    critic_lr: float = 5e-4  # critic learning rate (critic=separate)
    beta: float = 0.2  # KL penalty coefficient (initial value if adaptive)
    adaptive_kl: bool = False  # Ziegler et al. proportional controller
    target_kl: float = 1.0  # adaptive_kl: the KL the controller aims at
    kl_horizon: int = 10000  # adaptive_kl: the controller's horizon in episodes
    clip_eps: Optional[float] = 0.2  # None turns clipping off
    value_clip: Optional[float] = 0.2  # value-loss clip; none turns it off
    ptx_coef: float = 0.0  # gamma in InstructGPT eq. 2
    # pretraining sequences (of ptx_seq_len tokens) per RL episode in each iteration, each used
    # once. InstructGPT used 8; here 8 makes an iteration ~1.8x slower, 2 keeps it at ~1.25x
    ptx_ratio: int = 2
    ptx_seq_len: int = 32  # tokens per pretraining sequence
    ptx_data: str = "world"  # "world" (the toy corpus) or a plain-text file (e.g. WikiText-2 raw)
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    whiten_advantages: bool = True  # normalise advantages per batch (global over ranks)
    whiten_rewards: bool = False  # normalise rewards per batch (global over ranks)
    # "separate" (init from the RM; with a reward from outside the run, from the SFT policy with a
    # zeroed scalar head) or "head" (a zeroed value head on the policy)
    critic: str = "separate"
    vf_coef: float = 0.5  # only for critic=head
    max_new_tokens: int = 16  # response length
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0  # rollout nucleus sampling
    no_eos_penalty: float = -1.0  # added to the RM score when a response never ends
    grad_clip: float = 1.0  # max gradient norm, per model; 0: no clipping (TRL's PPOTrainer clips none)
    # critic=separate, on a CPU with threads >= 2 (0: torch's default), one process: the critic's
    # update runs on a thread of its own alongside the policy's, the threads split between them
    # (faster for small models; both models' activations and gradients are then held at once);
    # otherwise one after the other
    parallel_critic: bool = False
    checkpoint_every: int = 20  # iterations between checkpoints
    # save the policy when KL first passes each level (ppo/kl_<level>), for the over-optimisation eval
    kl_levels: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    max_prompt_tokens: int = 256  # longer prompts from ppo.data are skipped
    rounds: int = 1  # iterated RLHF: retrain the RM on fresh comparisons every steps/rounds
    data: str = "world"  # "world" (toy prompts) or a prompt file/HF dataset
    # data-parallel ranks (torchrun): "replicate" (each holds full models) or "fsdp" (FSDP2 shards
    # policy, value head, critic, reference; rlhf/sharding.py); one process: no effect
    sharding: str = "replicate"
    # LoRA (peft) on the policy: adapter rank, 0 = full fine-tuning; the reference policy is then
    # the same model with its adapters disabled (no second copy)
    lora_r: int = 0
    lora_alpha: float = 16.0  # LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)
    lora_dropout: float = 0.0  # LoRA dropout: kept as a key so that peft users see why it must stay 0
    # module names that get adapters (e.g. q_proj,v_proj); empty = peft's default for the architecture,
    # or every linear layer but the output one where peft has no default
    lora_target_modules: list[str] = field(default_factory=list)
    critic_lora: bool = False  # ppo.critic=separate with ppo.lora_r > 0: LoRA on the critic too (its head trained fully)
    # "" = every row of ppo.data; else only the rows whose "split" field equals it (e.g. train)
    data_split: str = ""
    # 0 = each row's prompt as it is; N > 0: the first N words of its prompt (or "text" field)
    prompt_words: int = 0
    # what PPO maximises (rlhf/rewards.py): rm (the run's reward model), classifier (the run's
    # classifier stage), rm:<path>, hf:<sequence classifier folder or hub name>, py:<module>:<function>
    reward: str = "rm"
    # classifier rewards: which logit is the reward: <label>, prob:<label>, diff:<label>,<label> (names or indices)
    reward_label: str = ""
    reward_input: str = "response"  # classifier rewards read the "response" or the "prompt+response"


@dataclass
class ClassifierConfig:
    """The classifier stage (rlhf/classifier.py): a sequence classifier trained on labelled
    texts, e.g. the sentiment reward of experiments/imdb_sentiment.yaml (ppo.reward=classifier)."""

    # a JSONL(.gz) file of rows with "text" and an integer "label"; rows whose "split" is
    # test/validation are the held-out set (without a split field, a seeded share is)
    data: str = ""
    # "" = model.source (scratch: the pretrain stage); "scratch" = a GPT-2 of the model.n_layer/n_embd/
    # n_head/n_positions shape on the run's tokenizer, from random weights; else an HF name/path/named source
    init: str = ""
    # keep only the first N transformer layers of the init model (0 = all): a cheaper classifier
    # that keeps the pretrained embeddings and lower layers
    n_layers: int = 0
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])  # label names, index 0 up
    max_examples: int = 2000  # training texts, a seeded sample (0 = all)
    n_heldout: int = 500  # held-out texts for the accuracy, a seeded sample
    max_length: int = 128  # tokens a text is cut to (from the left: its end is kept)
    epochs: int = 1  # passes over the training texts
    batch_size: int = 8  # texts per step
    lr: float = 2e-5  # learning rate (AdamW, linear decay)


@dataclass
class LoggingConfig:
    """Experiment trackers (rlhf/tracking.py); never part of a result or a stage's hash."""

    # "" (none), "tensorboard", "wandb", or both: a list or a comma string
    report_to: list[str] = field(default_factory=list)
    sample_every: int = 10  # PPO: every N iterations, a few samples go to the tracker as text
    n_samples: int = 4  # samples per logged iteration
    wandb_project: str = "rlhf"  # the W&B project (runs are named <run name>/<stage>)


@dataclass
class RunConfig:
    name: str = "quickstart"  # run directory name under out_dir
    out_dir: str = "runs"  # where run directories go
    seed: int = 0  # the run seed; each stage derives its own (config.stage_seed)
    device: str = "auto"  # auto | cpu | cuda
    # torch intra-op threads (one per process is fastest on small CPUs); at 2 or more on a CPU,
    # pretraining runs each step's batch halves side by side on two threads (rlhf/pretrain.py)
    # and ppo.parallel_critic can split them between policy and critic
    threads: int = 1
    stages: list[str] = field(default_factory=lambda: ["pretrain", "sft", "rm", "ppo"])  # which stages to run, in order
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


STAGES = ("pretrain", "sft", "classifier", "rm", "ppo")  # the stages a config lists, in order
STAGE_DIRS = ("world",) + STAGES  # a run directory's stage folders (world: the toy world, stage 0)
_ATTN = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
MAX_NAME_BYTES = 200  # file systems allow 255 bytes a name; stage directories add suffixes

# (key, predicate, what it must be). Checked after every load.
_RANGES: list[tuple[str, Any, str]] = [
    ("rm.k", lambda v: 2 <= v <= 9, "an integer from 2 to 9"),
    ("ppo.beta", lambda v: v >= 0, ">= 0"),
    ("ppo.ptx_coef", lambda v: v >= 0, ">= 0"),
    ("ppo.clip_eps", lambda v: v is None or v > 0, "> 0 or none"),
    ("ppo.value_clip", lambda v: v is None or v > 0, "> 0 or none"),
    ("ppo.ptx_ratio", lambda v: v >= 1, ">= 1"),
    ("ppo.gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("ppo.lam", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("ppo.temperature", lambda v: v > 0, "> 0"),
    ("ppo.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("ppo.target_kl", lambda v: v > 0, "> 0"),
    ("ppo.kl_horizon", lambda v: v > 0, "> 0"),
    ("ppo.critic", lambda v: v in ("separate", "head"), "'separate' or 'head'"),
    ("ppo.sharding", lambda v: v in ("replicate", "fsdp"), "'replicate' or 'fsdp'"),
    ("rm.loss", lambda v: v in ("kwise", "pairs"), "'kwise' or 'pairs'"),
    ("ppo.rounds", lambda v: v >= 1, ">= 1"),
    ("ppo.grad_clip", lambda v: v >= 0, ">= 0 (0: no clipping)"),
    ("rm.sample_temperature", lambda v: v > 0, "> 0"),
    ("rm.heldout_frac", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("world.labeler_noise", lambda v: v >= 0, ">= 0"),
    ("world.myth_frac", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("world.myth_rate", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("world.encyclopedia_rate", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("world.stereotype_rate", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("world.demo_myth_share", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("world.n_entities", lambda v: v >= 2, ">= 2"),
    ("world.n_values", lambda v: 3 <= v <= 12, "from 3 to 12"),
    ("world.myth_values", lambda v: 1 <= v, ">= 1 (and at most world.n_values - 2)"),
    ("world.demo_rude_openers", lambda v: 0 <= v <= 4, "from 0 to 4"),
    ("rm.n_test_prompts", lambda v: v >= 0, ">= 0 (0 = no test set)"),
    ("model.n_embd", lambda v: v > 0, "> 0"),
    ("model.dtype", lambda v: v in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
    ("model.chat_template", lambda v: v in ("auto", "on", "off"), "auto, on or off"),
    ("rm.train_layers", lambda v: v >= -1, ">= -1"),
    ("device", lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"), "auto, cpu or cuda[:N]"),
    ("threads", lambda v: v >= 0, ">= 0 (0 = torch default)"),
    ("stages", lambda v: len(v) > 0 and all(s in STAGES for s in v), f"a non-empty list of {STAGES}"),
]
for _sec in ("pretrain", "sft", "classifier", "rm", "ppo"):
    _RANGES.append((f"{_sec}.lr", lambda v: v > 0, "> 0"))
    _RANGES.append((f"{_sec}.batch_size", lambda v: v >= 1, ">= 1"))
for _key in ("pretrain.steps", "ppo.steps", "ppo.epochs", "ppo.minibatch_size", "sft.epochs",
             "rm.epochs", "rm.n_prompts", "pretrain.seq_len", "ppo.max_new_tokens",
             "rm.max_new_tokens", "model.n_layer", "model.n_head", "model.n_positions",
             "world.corpus_docs", "world.n_demos", "ppo.checkpoint_every"):
    _RANGES.append((_key, lambda v: v >= 1, ">= 1"))
for _key in ("ppo.critic_lr",):
    _RANGES.append((_key, lambda v: v > 0, "> 0"))
_MAX_SEED = 2**31 - 1  # derived seeds (seed * 1_000_003 + ...) must fit the 64-bit generators
# The stream of each stage's random numbers: stage_seed(seed, stage) = seed * 1000 + offset
# (+ 7919 * rank for the per-rank PPO streams). The values are the ones the stages used before
# this function existed, so results and run ids are unchanged.
_SEED_OFFSETS = {"pretrain": 1, "sft": 2, "rm": 3, "ppo": 4, "ptx": 5, "heldout_probe": 6, "classifier": 7}


def stage_seed(seed: int, stage: str, rank: int = 0) -> int:
    """The seed of ``stage``'s random numbers under the run seed ``seed``: pretrain, sft, rm,
    ppo (each data-parallel rank samples its own responses), ptx (the pretraining stream of
    PPO-ptx, per rank) and heldout_probe (the held-out before/after samples) and classifier
    (the classifier stage)."""
    if stage not in _SEED_OFFSETS:
        raise ConfigError(f"stage_seed: unknown stage {stage!r} (known: {', '.join(_SEED_OFFSETS)})")
    return seed * 1000 + _SEED_OFFSETS[stage] + 7919 * rank


_RANGES += [
    ("seed", lambda v: 0 <= v <= _MAX_SEED, f"an integer from 0 to {_MAX_SEED}"),
    ("world.seed", lambda v: 0 <= v <= _MAX_SEED, f"an integer from 0 to {_MAX_SEED}"),
    ("world.toxic_rate_challenging", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("world.toxic_rate_other", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("ppo.ptx_seq_len", lambda v: v >= 2, ">= 2"),
    ("rm.max_length", lambda v: v >= 2, ">= 2"),
    ("pretrain.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("pretrain.autocast", lambda v: v in ("none", "bf16"), "none or bf16"),
    ("pretrain.weight_decay", lambda v: v >= 0, ">= 0"),
    ("sft.max_examples", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("rm.max_examples", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("ppo.kl_levels", lambda v: all(x > 0 for x in v), "a list of numbers > 0"),
    ("ppo.vf_coef", lambda v: v >= 0, ">= 0"),
    ("ppo.max_prompt_tokens", lambda v: v >= 1, ">= 1"),
    ("model.attn_implementation", lambda v: v in _ATTN, " or ".join(_ATTN)),
    ("logging.report_to", lambda v: all(x in ("", "tensorboard", "wandb") for x in v),
     "a list (or comma string) of tensorboard, wandb; empty for none"),
    ("logging.sample_every", lambda v: v >= 1, ">= 1"),
    ("model.autocast", lambda v: v in ("none", "bf16", "fp16"), "none, bf16 or fp16 (fp16 needs CUDA)"),
    ("ppo.lora_r", lambda v: v >= 0, ">= 0 (0 = full fine-tuning)"),
    ("ppo.lora_alpha", lambda v: v > 0, "> 0"),
    ("ppo.lora_dropout", lambda v: v == 0,
     "0 (LoRA dropout makes the update's log-probs differ from the rollout's: PPO's ratio would not start at 1)"),
    ("ppo.prompt_words", lambda v: v >= 0, ">= 0 (0 = the whole prompt)"),
    ("ppo.reward_input", lambda v: v in ("response", "prompt+response"), "'response' or 'prompt+response'"),
    ("classifier.epochs", lambda v: v >= 1, ">= 1"),
    ("classifier.n_layers", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("classifier.max_examples", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("classifier.n_heldout", lambda v: v >= 1, ">= 1"),
    ("classifier.max_length", lambda v: v >= 2, ">= 2"),
    ("classifier.labels", lambda v: len(v) >= 2 and len(set(v)) == len(v) and all(v), "at least 2 distinct names"),
    ("logging.n_samples", lambda v: v >= 0, ">= 0"),
]
# Keys whose every finite value is meaningful (the gold reward's weights, a penalty).
_ANY_NUMBER = ("world.w_correct", "world.w_myth", "world.w_wrong", "world.w_toxic", "world.w_unfinished",
               "world.w_polite", "world.w_extra", "ppo.no_eos_penalty")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ------------------------------------------------------------------------------------------
# The typed settings mechanism: one coercion, one range check, one override syntax, shared by
# RunConfig (here), EvalSettings (eval/settings.py) and ClusterProfile (slurm/sweep.py).

def _coerce(key: str, value: Any, tp: Any, error: type = ConfigError) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ``error`` naming ``key``.

    One rule set for every settings class: ``none``/``null``/``off`` only where the type is
    Optional; booleans are never integers or numbers; numbers must be finite (inf and nan are
    refused); a string list is ``[a, b]`` (YAML) or ``a,b``; a mapping stays a mapping."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "off")):
            if type(None) in args:
                return None
            raise error(f"{key}: must not be none")
        return _coerce(key, value, non_none[0], error)
    if origin is list:
        (item_tp,) = args
        if isinstance(value, str):
            if value.strip().startswith("["):
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise error(f"{key}: expected a list such as [a, b], got {value!r} (not valid YAML)") from None
            else:
                value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise error(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp, error) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise error(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise error(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise error(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise error(f"{key}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise error(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise error(f"{key}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        if value is None:
            raise error(f"{key}: must be a string, not null (use \"\" for an empty value)")
        if isinstance(value, (dict, list)):
            raise error(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise error(f"{key}: unsupported type {tp}")


def apply_settings(obj: Any, data: Any, *, prefix: str = "", error: type = ConfigError, what: str = "key",
                   aliases: Optional[dict[str, str]] = None) -> None:
    """Set the dataclass ``obj``'s fields from the mapping ``data`` (nested dataclasses take
    nested mappings), each value coerced to its annotated type; an unknown key raises
    ``error`` ("unknown <what> '<prefix><key>'") listing the known ones. ``aliases`` maps
    other spellings to field names."""
    if not isinstance(data, dict):
        raise error(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _field_types(type(obj))
    for k, v in data.items():
        name = (aliases or {}).get(k, k)
        key = f"{prefix}{k}"
        if name not in hints:
            known = ", ".join(sorted(hints))
            raise error(f"unknown {what} '{key}' (known here: {known})")
        cur = getattr(obj, name)
        if dataclasses.is_dataclass(cur):
            apply_settings(cur, v, prefix=f"{key}.", error=error, what=what)
        else:
            setattr(obj, name, _coerce(key, v, hints[name], error))


def check_ranges(values: dict[str, Any], ranges: list[tuple[str, Any, str]], error: type = ConfigError,
                 prefix: str = "") -> None:
    """Every ``(key, predicate, what it must be)`` of ``ranges`` holds for ``values[key]``, or
    ``error`` names the key, its value and the range."""
    for key, pred, what in ranges:
        val = values[key]
        try:
            ok = pred(val)
        except TypeError:
            ok = False
        if not ok:
            raise error(f"{prefix}{key}={val!r} is out of range: must be {what}")


def parse_override(text: str, error: type = ConfigError) -> tuple[str, Any]:
    """``key=value`` (the value read as YAML: ``0.1``, ``true``, ``[a, b]``, ``none``) ->
    (key, value): the one command-line override syntax of every subcommand."""
    if "=" not in text:
        raise error(f"override '{text}' must look like key=value (e.g. rm.k=9)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise error(f"override '{text}' has an empty key")
    try:
        val = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        val = raw
    if isinstance(val, (dict,)):
        raise error(f"{key}: expected a scalar or list, got {raw!r}")
    return key, val


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(``key=value`` words, the rest) of a command line: overrides may stand anywhere, also
    after options such as ``--force``; a word that starts with ``-`` is never an override."""
    over = [a for a in argv if "=" in a and not a.startswith("-")]
    return over, [a for a in argv if a not in over]


def nest(flat: dict[str, Any]) -> dict:
    """{'rm.k': 9} -> {'rm': {'k': 9}}"""
    out: dict = {}
    for key, val in flat.items():
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"{key}: '{p}' is not a section")
        cur[parts[-1]] = val
    return out


def validate(cfg: RunConfig) -> RunConfig:
    # YAML reads a bare on/off as a boolean, which the string field holds as "True"/"False"
    cfg.model.chat_template = {"True": "on", "False": "off"}.get(cfg.model.chat_template, cfg.model.chat_template)
    check_ranges(flatten(cfg), _RANGES)
    if cfg.ppo.minibatch_size > cfg.ppo.batch_size:
        raise ConfigError(
            f"ppo.minibatch_size={cfg.ppo.minibatch_size} is out of range: must be <= ppo.batch_size={cfg.ppo.batch_size}")
    if cfg.ppo.batch_size % cfg.ppo.minibatch_size:
        raise ConfigError(
            f"ppo.minibatch_size={cfg.ppo.minibatch_size} must divide ppo.batch_size={cfg.ppo.batch_size}")
    if cfg.model.source == "scratch" and cfg.model.n_embd % cfg.model.n_head:
        raise ConfigError(f"model.n_embd={cfg.model.n_embd} must be divisible by model.n_head={cfg.model.n_head}")
    if cfg.model.source == "scratch" and cfg.pretrain.seq_len > cfg.model.n_positions:
        raise ConfigError(f"pretrain.seq_len={cfg.pretrain.seq_len} must be <= model.n_positions={cfg.model.n_positions}")
    if cfg.world.myth_values > cfg.world.n_values - 2:
        raise ConfigError(f"world.myth_values={cfg.world.myth_values} must be <= world.n_values - 2 "
                          f"({cfg.world.n_values - 2}): each attribute needs true values and distractors")
    if cfg.ppo.rounds > cfg.ppo.steps:
        raise ConfigError(f"ppo.rounds={cfg.ppo.rounds} must be <= ppo.steps={cfg.ppo.steps}")
    if cfg.ppo.lora_r and cfg.ppo.sharding == "fsdp":
        raise ConfigError("ppo.lora_r > 0 with ppo.sharding=fsdp is not supported (LoRA checkpoints hold adapters "
                          "only, FSDP checkpoints gather full models; the two have not been tested together): "
                          "use LoRA with ppo.sharding=replicate, or full fine-tuning with fsdp")
    if cfg.ppo.critic_lora and (cfg.ppo.lora_r == 0 or cfg.ppo.critic != "separate"):
        raise ConfigError("ppo.critic_lora=true needs ppo.lora_r > 0 and ppo.critic=separate "
                          f"(got ppo.lora_r={cfg.ppo.lora_r}, ppo.critic={cfg.ppo.critic})")
    if cfg.model.autocast == "fp16" and cfg.device == "cpu":
        raise ConfigError("model.autocast=fp16 needs a CUDA device (device=cpu): use model.autocast=bf16 on a CPU")
    if cfg.rm.data != "world" and cfg.rm.k != 2:
        raise ConfigError(f"rm.k={cfg.rm.k}: pairwise data ({cfg.rm.data}) only supports rm.k=2")
    if "/" in cfg.name or "\0" in cfg.name or cfg.name in ("", ".", "..") or cfg.name.startswith("-"):
        raise ConfigError(f"name={cfg.name!r} must be a plain directory name")
    if len(cfg.name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ConfigError(f"name: {len(cfg.name.encode('utf-8'))} bytes is too long for a directory name "
                          f"(at most {MAX_NAME_BYTES})")
    _validate_reward(cfg)
    if "\0" in cfg.out_dir or not cfg.out_dir:
        raise ConfigError(f"out_dir={cfg.out_dir!r} must be a directory path")
    return cfg


def _validate_reward(cfg: RunConfig) -> None:
    """``ppo.reward`` parses (rlhf/rewards.py), and no combination is left unclear: the label
    and input switches only mean something for a classifier, and iterated RLHF retrains the
    run's own reward model, so it cannot run on a reward from outside the run."""
    from .reward_spec import parse_reward_spec
    spec = parse_reward_spec(cfg.ppo.reward)
    if spec.kind not in ("hf", "classifier"):
        for key, val, default in (("reward_label", cfg.ppo.reward_label, ""),
                                  ("reward_input", cfg.ppo.reward_input, "response")):
            if val != default:
                raise ConfigError(f"ppo.{key}={val!r} only applies to a classifier reward (ppo.reward=classifier or "
                                  f"hf:<path>), not ppo.reward={cfg.ppo.reward}")
    if spec.outside and cfg.ppo.rounds > 1:
        raise ConfigError(f"ppo.rounds={cfg.ppo.rounds} retrains the run's reward model, but ppo.reward="
                          f"{cfg.ppo.reward} is not it: use ppo.rounds=1")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(flatten(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


# Keys that were removed from the code (read nowhere): a saved config that has them still
# loads, and they count as no change. pretrain.heldout_frac: the held-out corpus is the toy
# world's (World.heldout_corpus), never a fraction of the training text.
REMOVED_KEYS = ("pretrain.heldout_frac",)


def _without_removed(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key in REMOVED_KEYS:
        sec, name = key.split(".", 1)
        if isinstance(out.get(sec), dict):
            out[sec].pop(name, None)
    return out


def from_dict(data: dict, overrides: Optional[list[str]] = None) -> RunConfig:
    cfg = RunConfig()
    apply_settings(cfg, _without_removed(data or {}))
    if overrides:
        flat = dict(parse_override(o) for o in overrides)
        apply_settings(cfg, nest(flat))
    return validate(cfg)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last,
    silently): a second ``steps:`` under ``ppo:`` is a mistake, not an override."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: str | Path, error: type = ConfigError, what: str = "config file") -> Any:
    """The YAML document in ``path``; a missing, unreadable, non-UTF-8 or invalid file (a key
    given twice in one mapping included) raises ``error`` (an InputError: exit status 2) naming
    it. Config, sweep, settings, eval and claims files."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return yaml.load(p.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise error(f"{p}: cannot be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Defaults <- YAML file <- dotted ``key=value`` overrides, then validated."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        data = read_yaml_file(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of config keys")
    return from_dict(data, overrides)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys that say where and how much of a run to do, not what it computes: a run directory
# that was moved (name, out_dir), continued with more stages, run with other threads (or with
# the critic's update on a thread of its own: float sums in another order, as other threads) or
# with activations recomputed in the backward pass (the same numbers) is the same run.
NO_RESULT_KEYS = ("name", "out_dir", "stages", "threads", "model.gradient_checkpointing",
                  "ppo.parallel_critic")
NO_RESULT_SECTIONS = ("logging",)  # trackers: where results are shown, never what they are


def _is_result_key(key: str) -> bool:
    return key not in NO_RESULT_KEYS and key.split(".", 1)[0] not in NO_RESULT_SECTIONS


def config_changes(old_yaml: str, cfg: RunConfig) -> list[str]:
    """What differs between a run directory's saved ``config.yaml`` and ``cfg``, as
    ``key: old -> new`` lines (``NO_RESULT_KEYS`` never count). A key the saved config lacks is no change when ``cfg`` has
    its default there: a switch added to the code after the run was made, at the value
    that reproduces the old behaviour."""
    old = yaml.safe_load(old_yaml) or {}
    if not isinstance(old, dict):
        raise ConfigError("the saved config is not a mapping of config keys")
    old = _flatten_dict(old)
    new = _flatten_dict(yaml.safe_load(dump_yaml(cfg)))
    defaults = _flatten_dict(yaml.safe_load(dump_yaml(RunConfig())))
    changes = []
    for key in sorted(set(old) | set(new)):
        if not _is_result_key(key) or key in REMOVED_KEYS:
            continue
        if key not in old and new.get(key) == defaults.get(key):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changes.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return changes


# Which config keys each stage's result depends on (besides the stages before it). Keys that
# never change a result (NOT_A_RESULT_KEY) are left out.
_STAGE_SECTIONS = {"world": ("world",), "pretrain": ("seed", "world", "model", "pretrain"),
                   "sft": ("seed", "world", "model", "pretrain", "sft"),
                   "classifier": ("seed", "world", "model", "pretrain", "classifier"),
                   "rm": ("seed", "world", "model", "pretrain", "sft", "rm")}
NOT_A_RESULT_KEY = NO_RESULT_KEYS + ("device",)


def _stage_sections(stage: str) -> tuple[str, ...]:
    """The config sections a stage other than ppo depends on; an unknown stage is an error."""
    if stage not in _STAGE_SECTIONS:
        raise ConfigError(f"unknown stage {stage!r} (known: world, {', '.join(STAGES)})")
    return _STAGE_SECTIONS[stage]


def built_from(stage: str) -> tuple[str, ...]:
    """The stages whose results ``stage``'s result is built from, in pipeline order: those whose
    config section its :func:`stage_keys` covers (ppo: every other stage). A shared build of a
    stage (slurm/shared.py) brings these along."""
    if stage == "ppo":
        return tuple(s for s in STAGES if s != "ppo")
    return tuple(s for s in STAGES if s != stage and s in _stage_sections(stage))


def stages_shaped_by(key: str) -> tuple[str, ...]:
    """The stages (world, pretrain, sft, classifier, rm, ppo) whose result a config key shapes: the
    inverse of :func:`stage_keys`, used by the run directory's config checks."""
    if key in NOT_A_RESULT_KEY or not _is_result_key(key):
        return ()
    section = key.split(".", 1)[0]
    return tuple(s for s in STAGE_DIRS if s == "ppo" or section in _STAGE_SECTIONS[s])


def stage_keys(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """The resolved config keys that the result of ``stage`` (world, pretrain, sft, classifier,
    rm, ppo) depends on: world <- world.*; pretrain <- seed, world.*, model.*, pretrain.*; sft <-
    those + sft.*; classifier <- pretrain's + classifier.*; rm <- sft's + rm.*; ppo <- every key;
    never the keys that change no result (``NOT_A_RESULT_KEY``: name, out_dir, stages, threads,
    device, model.gradient_checkpointing, ppo.parallel_critic) nor logging.*."""
    flat = flatten(cfg)
    if stage == "ppo":
        return {k: v for k, v in flat.items() if k not in NOT_A_RESULT_KEY and _is_result_key(k)}
    secs = _stage_sections(stage)
    return {k: v for k, v in flat.items()
            if k.split(".")[0] in secs and k not in NOT_A_RESULT_KEY and _is_result_key(k)}


def stage_hash(cfg: RunConfig, stage: str) -> str:
    """12 hex digits naming the result of ``stage`` under ``cfg``: two configs with the same
    hash build byte-for-byte the same stage (deterministic pipeline) at the same ``threads``,
    so one can reuse it. ``threads`` is left out: it changes no setting, only the order of
    float sums, so runs at other thread counts give results equal up to float rounding."""
    import hashlib
    import json
    text = json.dumps({"stage": stage, **stage_keys(cfg, stage)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def keys_markdown() -> str:
    """Every run-config key as a markdown table (key, default, range, meaning), read from the
    dataclasses above: the meaning is the key's end-of-line comment (a section's comment line
    just above a key also counts). ``rlhf config --keys`` prints it; docs/config.md is its output."""
    import inspect
    import re

    ranges = {k: what for k, _, what in _RANGES}
    EMPTY = '""'
    rows = ["| key | default | range | meaning |", "| --- | --- | --- | --- |"]
    sections = [("", RunConfig)] + [(f.name + ".", f.default_factory) for f in fields(RunConfig)
                                    if is_dataclass(f.default_factory)]
    defaults = flatten(RunConfig())
    for prefix, cls in sections:
        notes, pending = {}, []
        for line in inspect.getsource(cls).splitlines()[1:]:
            m = re.match(r"\s+(\w+): [^=]+=.*?(?:#\s*(.*))?$", line)
            c = re.match(r"\s+#\s*(.*)$", line)
            if c:
                pending.append(c.group(1))
            elif m:
                notes[m.group(1)] = " ".join(pending + ([m.group(2)] if m.group(2) else []))
                pending = []
        for f in fields(cls):
            if is_dataclass(f.default_factory):
                continue
            key = prefix + f.name
            d = defaults.get(key)
            shown = "none" if d is None else ",".join(map(str, d)) if isinstance(d, list) else str(d).lower() \
                if isinstance(d, bool) else str(d)
            meaning = notes.get(f.name, "").replace("|", "\\|")
            rows.append(f"| `{key}` | {shown or EMPTY} | {ranges.get(key, '')} | {meaning} |")
    return "\n".join(rows) + "\n"
