"""Ideas from issue 12 measured side by side, kept or not by these figures.

    python bench/speed_ideas.py [--repeats 3] [--steps 20] [--json out.json] [--quick]

Each idea is timed against its baseline in one process, alternating (baseline, idea,
baseline, ...), a few warm-up steps first; medians over repeats of ``--steps`` steps.

* ``pretrain_bf16``: one quickstart pretraining step (scratch GPT-2 2 layers at the quickstart's
  width, the world tokenizer's vocabulary, batch 32 x 64: pretraining's forward on the whole
  batch, ``lm_loss``, backward, AdamW) in
  float32 against ``torch.autocast`` bf16 (``pretrain.autocast=bf16``), at 1 and 2 torch
  threads. bf16 only pays on CPUs with native bf16 arithmetic (AVX512-BF16, AMX) and GPUs.
* ``pretrain_step``: the quickstart's pretraining step as shipped (``rlhf/pretrain.py``: the
  lean GPT-2 forward, the direct AdamW step; at 2 threads the batch's halves side by side, the
  thread split held over the loop) against as it was (transformers' forward, torch's AdamW, the
  whole batch at 2 intra-op threads), and the halves with the split released after each step.
* ``pretrain_flops``: why fewer seconds of pretraining need fewer FLOPs. The float32 step
  above against its arithmetic (matmul FLOPs counted from the shapes: 3 x forward, forward =
  2 x tokens x (12 x layers x width^2 + vocab x width) + 4 x layers x batch x seq^2 x width)
  and against this machine's float32 matmul rate on the step's own largest matmul (the MLP's
  tokens x width x 4 width, forward shape) at the same threads: the share of that rate the
  step reaches, and the least time ``pretrain.steps`` steps would take at it.
* ``lean_forward``: the toy PPO policy (GPT-2 2 layers, width 64; 8 rows of 20 prompt + 32
  response tokens, left padding) through ``rlhf.ppo.policy_forward`` + a log-prob loss +
  backward: transformers' forward against ``rlhf.gpt2.hidden`` (the same kernels in the
  same order, without the module machinery: kept); reports whether the logits and
  gradients are bit-identical and the time of each.
* ``adamw_step``: one AdamW step + ``zero_grad`` of the toy policy's 28 tensors: torch's
  ``AdamW(fused=True)`` against ``rlhf.optim.AdamW`` (its kernel called directly: kept).
* ``compile_update``: the same step eager against ``torch.compile`` (inductor on CPU): the
  compile time of the first call, cold (inductor's caches off), and ms/step after it (``--no-compile`` skips it).

Not measured here: the ideas already in the code (log-probs from the sampling pass, the lean
KV-cache sampler, ``gc.freeze()``, the reference forward skipped at beta = 0) are in the
sides of ``bench/ppo_vs_trl.py`` and ``bench/ptx_overhead.py``; the kept changes' effect on a
whole PPO iteration is ``bench/ppo_changes.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

F = torch.nn.functional


def _time(fn, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1000


def alternate(sides: dict, steps: int, repeats: int, warmup: int = 3) -> dict:
    """{name: step function} -> {name: {"ms": median, "min", "max", "all"}} timed alternately."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    res = {k: [] for k in sides}
    for _ in range(repeats):
        for k, fn in sides.items():
            res[k].append(_time(fn, steps))
    return {k: {"ms": statistics.median(v), "min": min(v), "max": max(v), "all": v} for k, v in res.items()}


def world_and_tokenizer():
    from rlhf.config import load_config
    from rlhf.tokenizer import train_world_tokenizer
    from rlhf.world import World
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", [])
    world = World(cfg.world)
    return cfg, world, train_world_tokenizer(world)


def pretrain_bf16(steps: int, repeats: int, threads: tuple[int, ...]) -> dict:
    from rlhf.models import scratch_model
    from rlhf.pretrain import encode_corpus, next_token_loss, random_windows
    cfg, world, tok = world_and_tokenizer()
    pc = cfg.pretrain
    torch.manual_seed(0)
    model = scratch_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stream = encode_corpus(tok, world.corpus())
    x = random_windows(stream, pc.batch_size, pc.seq_len, torch.Generator().manual_seed(0))

    def step(mode):
        def f():
            loss = next_token_loss(model, x, mode)  # pretraining's forward (the whole batch on this thread)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return f
    out = {"model": f"GPT-2 {cfg.model.n_layer} layers, width {cfg.model.n_embd}, vocab {len(tok)}",
           "batch": f"{pc.batch_size} x {pc.seq_len}", "rows": [],
           "shape": {"layers": cfg.model.n_layer, "width": cfg.model.n_embd, "vocab": len(tok),
                     "batch": pc.batch_size, "seq": pc.seq_len, "steps": pc.steps}}
    for n in threads:
        torch.set_num_threads(n)
        r = alternate({"float32": step("none"), "bf16": step("bf16")}, steps, repeats)
        out["rows"].append({"threads": n, **{k: v for k, v in r.items()}})
    torch.set_num_threads(1)
    return out


def pretrain_step(steps: int, repeats: int) -> dict:
    """The quickstart's pretraining step as shipped against what it was (transformers' forward,
    torch's AdamW), each with the gradient clip: at 2 threads also the batch's halves side by
    side with the thread split released after every step (as ``SideThread.alongside`` alone
    does) and held for the whole loop (``rlhf.pretrain.halves_thread``: shipped); at 1 thread
    the whole batch (the findings suite's setting). Each setting times ``steps`` steps in a
    row, settings alternated, ``repeats`` rounds."""
    from rlhf.losses import lm_loss
    from rlhf.models import scratch_model
    from rlhf.optim import AdamW
    from rlhf.pretrain import backward_in_halves, encode_corpus, next_token_loss, random_windows
    from rlhf.threads import SideThread
    import contextlib
    cfg, world, tok = world_and_tokenizer()
    pc = cfg.pretrain
    torch.manual_seed(0)
    model = scratch_model(cfg.model, len(tok), tok.pad_token_id, tok.eos_token_id).train()
    params = list(model.parameters())
    opts = {"torch": torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95)), "direct": AdamW(params, lr=1e-4, betas=(0.9, 0.95))}
    x = random_windows(encode_corpus(tok, world.corpus()), pc.batch_size, pc.seq_len, torch.Generator().manual_seed(0))

    def finish(opt):
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def before():
        opts["torch"].zero_grad(set_to_none=True)
        lm_loss(model(input_ids=x, attention_mask=torch.ones_like(x)).logits, x).backward()
        finish(opts["torch"])

    def whole():
        opts["direct"].zero_grad(set_to_none=True)
        next_token_loss(model, x).backward()
        finish(opts["direct"])

    def halves(side):
        def f():
            opts["direct"].zero_grad(set_to_none=True)
            backward_in_halves(model, params, x, side, "none")
            finish(opts["direct"])
        return f
    out = {"model": f"GPT-2 {cfg.model.n_layer} layers, width {cfg.model.n_embd}, vocab {len(tok)}",
           "batch": f"{pc.batch_size} x {pc.seq_len}", "rows": []}
    for n in (2, 1):
        torch.set_num_threads(n)
        sides = {"before": (before, contextlib.nullcontext), "whole": (whole, contextlib.nullcontext)}
        side = None
        if n >= 2:
            side = SideThread(n, name="pretrain-half")
            sides["halves_released"] = (halves(side), contextlib.nullcontext)  # alongside splits per step
            sides["halves"] = (halves(side), side.split)  # the split held over the steps
        res = {k: [] for k in sides}
        for fn, ctx in sides.values():
            with ctx():
                for _ in range(3):
                    fn()
        for _ in range(repeats):
            for k, (fn, ctx) in sides.items():
                with ctx():
                    res[k].append(_time(fn, steps))
        if side is not None:
            side.close()
        out["rows"].append({"threads": n, **{k: {"ms": statistics.median(v), "min": min(v), "max": max(v), "all": v}
                                             for k, v in res.items()}})
    torch.set_num_threads(1)
    return out


def step_flops(layers: int, width: int, vocab: int, batch: int, seq: int) -> int:
    """Matmul FLOPs of one GPT-2 training step (forward and backward = 3 x forward)."""
    fwd = 2 * batch * seq * (12 * layers * width * width + vocab * width) + 4 * layers * batch * seq * seq * width
    return 3 * fwd


def pretrain_flops(bf16: dict, steps: int, repeats: int) -> dict:
    """The float32 pretraining step's FLOP rate (from ``pretrain_bf16``'s times) against the
    float32 matmul rate of its largest matmul shape, per thread count."""
    sh = bf16["shape"]
    L, D, V, B, T, steps_total = sh["layers"], sh["width"], sh["vocab"], sh["batch"], sh["seq"], sh["steps"]
    flops = step_flops(L, D, V, B, T)
    a, w = torch.randn(B * T, D), torch.randn(D, 4 * D)
    rows = []
    for r in bf16["rows"]:
        torch.set_num_threads(r["threads"])
        mm = alternate({"mm": lambda: torch.mm(a, w)}, steps * 20, repeats)["mm"]
        peak = 2 * B * T * D * 4 * D / (mm["ms"] / 1e3) / 1e9
        got = flops / (r["float32"]["ms"] / 1e3) / 1e9
        rows.append({"threads": r["threads"], "step_ms": r["float32"]["ms"], "gflops": got, "mm_gflops": peak,
                     "share": got / peak, "least_s": steps_total * flops / (peak * 1e9)})
    torch.set_num_threads(1)
    return {"flops_per_step": flops, "width": D, "flops_per_step_width128": step_flops(L, 128, V, B, T),
            "steps": steps_total, "mm_shape": f"({B * T} x {D}) @ ({D} x {4 * D})", "rows": rows}


def _toy_policy(width: int = 64):
    from rlhf.models import position_ids_from_mask
    _, _, tok = world_and_tokenizer()
    from transformers import GPT2Config, GPT2LMHeadModel
    c = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=width, n_layer=2, n_head=4, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_pytorch_tanh")
    c._attn_implementation = "sdpa"
    torch.manual_seed(0)
    m = GPT2LMHeadModel(c)
    m.train()
    B, P, T = 8, 20, 32
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    for b in range(B):
        mask[b, :b % 5] = 0  # left padding, as PPO's prompts
    mask[0, -3:] = 0  # a response that ended early
    return m, ids, mask, position_ids_from_mask(mask), T


def lean_forward(steps: int, repeats: int) -> dict:
    """PPO's policy forward (``rlhf.ppo.policy_forward``) + a log-prob loss + backward, through
    transformers' GPT-2 (``rlhf.gpt2.eligible`` off) and through ``rlhf.gpt2.hidden``."""
    import rlhf.models as models
    import rlhf.ppo as ppo
    from rlhf import gpt2
    m, ids, mask, pos, T = _toy_policy()
    P = ids.shape[1] - T
    prompt, pmask, resp, rmask = ids[:, :P], mask[:, :P], ids[:, P:], mask[:, P:]
    off = type("Off", (), {"eligible": staticmethod(lambda model: False), "hidden": staticmethod(gpt2.hidden)})

    def fwd_bwd(lean: bool):
        def f():
            models.gpt2 = gpt2 if lean else off  # (rlhf.models.lm_forward reads it)
            try:
                logp, logits, _ = ppo.policy_forward(m, prompt, pmask, resp, rmask)
            finally:
                models.gpt2 = gpt2
            (-(logp * rmask).sum() / rmask.sum()).backward()
            grads = [p.grad for p in m.parameters()]
            m.zero_grad(set_to_none=True)
            return logits.detach(), grads
        return f
    (a, ga), (b, gb) = fwd_bwd(False)(), fwd_bwd(True)()
    # the logits bit for bit; the weight gradients up to rounding (the last block on the kept rows: gpt2.blocks)
    grad_rel = max(float((x - y).abs().max()) / max(float(x.abs().max()), 1e-30) for x, y in zip(ga, gb))
    r = alternate({"transformers": fwd_bwd(False), "lean": fwd_bwd(True)}, steps, repeats)
    return {"model": "GPT-2 2 layers, width 64", "shape": "8 x (20 + 32)", "logits_bit_identical": bool(torch.equal(a, b)),
            "grads_bit_identical": all(torch.equal(x, y) for x, y in zip(ga, gb)), "grad_max_rel_diff": grad_rel, **r}


def adamw_step(steps: int, repeats: int) -> dict:
    """One optimiser step of the toy policy's parameters (GPT-2 2 layers, width 64: 28 tensors),
    gradients set: torch's ``AdamW(fused=True)`` against ``rlhf.optim.AdamW`` (the same kernel,
    called directly), each with its ``zero_grad``; and whether they step to the same floats."""
    from rlhf import optim
    m, *_ = _toy_policy()
    params = [p for p in m.parameters()]
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    copies = {k: [p.detach().clone().requires_grad_(True) for p in params] for k in ("torch", "direct")}
    opts = {"torch": torch.optim.AdamW(copies["torch"], lr=1e-5, eps=1e-5, weight_decay=0.0, fused=True),
            "direct": optim.AdamW(copies["direct"], lr=1e-5, eps=1e-5, weight_decay=0.0)}

    def step(k):
        def f():
            for p, gr in zip(copies[k], grads):
                p.grad = gr
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
        return f
    r = alternate({k: step(k) for k in opts}, steps * 10, repeats)
    same = all(torch.equal(x, y) for x, y in zip(copies["torch"], copies["direct"]))
    return {"model": "GPT-2 2 layers, width 64", "tensors": len(params), "bit_identical": same, **r}


def compile_update(steps: int, repeats: int) -> dict:
    from rlhf.losses import logprobs_from_logits
    m, ids, mask, pos, T = _toy_policy()
    resp = ids[:, -T:]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5)

    def loss_fn():
        logits = m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=T + 1).logits
        return -logprobs_from_logits(logits[:, :-1], resp).mean()
    # a cold compile, as on a fresh machine: inductor's on-disk caches (which a second run of
    # this script would hit, about 5x faster) are neither read nor written
    import torch._inductor.config as inductor_config
    inductor_config.force_disable_caches = True
    compiled = torch.compile(loss_fn)

    def step(fn):
        def f():
            fn().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return f
    t = time.perf_counter()
    step(compiled)()
    compile_s = time.perf_counter() - t
    r = alternate({"eager": step(loss_fn), "compiled": step(compiled)}, steps, repeats)
    return {"model": "GPT-2 2 layers, width 64", "shape": "8 x (20 + 32)", "compile_s": compile_s, **r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="thread counts for pretrain_bf16")
    ap.add_argument("--no-compile", action="store_true", help="skip compile_update (its compile takes about a minute)")
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 repeat, no compile: checks the script only")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.repeats, a.no_compile = 2, 1, True
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(1)
    out = {"steps": a.steps, "repeats": a.repeats,
           "pretrain_bf16": pretrain_bf16(a.steps, a.repeats, tuple(int(x) for x in a.threads.split(",")))}
    for r in out["pretrain_bf16"]["rows"]:
        print(f"pretrain step, {r['threads']} thread(s): float32 {r['float32']['ms']:.1f} ms, bf16 {r['bf16']['ms']:.1f} ms "
              f"({r['float32']['ms'] / r['bf16']['ms']:.2f}x)")
    pf = out["pretrain_flops"] = pretrain_flops(out["pretrain_bf16"], a.steps, a.repeats)
    for r in pf["rows"]:
        print(f"pretrain step, {r['threads']} thread(s): {pf['flops_per_step'] / 1e9:.2f} GFLOP in {r['step_ms']:.1f} ms = "
              f"{r['gflops']:.0f} GFLOP/s, {r['share']:.0%} of the {r['mm_gflops']:.0f} GFLOP/s of its largest matmul; "
              f"{pf['steps']} steps take at least {r['least_s']:.1f} s at that rate")
    ps = out["pretrain_step"] = pretrain_step(a.steps, a.repeats)
    for r in ps["rows"]:
        print(f"pretrain step as shipped, {r['threads']} thread(s): "
              + ", ".join(f"{k} {v['ms']:.1f} ms" for k, v in r.items() if k != "threads")
              + f"; before / shipped {r['before']['ms'] / r.get('halves', r['whole'])['ms']:.2f}x")
    lf = out["lean_forward"] = lean_forward(a.steps, a.repeats)
    print(f"policy forward+backward: transformers {lf['transformers']['ms']:.2f} ms, lean {lf['lean']['ms']:.2f} ms "
          f"({lf['transformers']['ms'] / lf['lean']['ms']:.2f}x), logits bit-identical: {lf['logits_bit_identical']}, "
          f"weight gradients bit-identical: {lf['grads_bit_identical']} (largest difference {lf['grad_max_rel_diff']:.1e} "
          "of a tensor's largest entry)")
    ad = out["adamw_step"] = adamw_step(a.steps, a.repeats)
    print(f"AdamW step + zero_grad: torch fused {ad['torch']['ms'] * 1e3:.0f} us, direct {ad['direct']['ms'] * 1e3:.0f} us "
          f"({ad['torch']['ms'] / ad['direct']['ms']:.2f}x), bit-identical: {ad['bit_identical']}")
    if not a.no_compile:
        cu = out["compile_update"] = compile_update(a.steps, a.repeats)
        print(f"update step: eager {cu['eager']['ms']:.2f} ms, compiled {cu['compiled']['ms']:.2f} ms "
              f"({cu['eager']['ms'] / cu['compiled']['ms']:.2f}x) after a {cu['compile_s']:.1f} s compile")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
