"""How our PPO iteration time and peak memory grow with model width, response length and
batch size.

    python bench/ppo_growth.py [--widths 64,128,256,512] [--lengths 16,32,64,128]
                               [--batches 4,8,16,32] [--steps 4] [--repeats 2] [--json out.json]

Width sweep: 2 layers, batch 8, 32 new tokens, 4 PPO epochs over one minibatch (the
bench/ppo_vs_trl.py setting), width in ``--widths`` (4 heads). Length sweep: width 64,
``--lengths`` new tokens. Position embeddings are 256 everywhere so that the longest
response fits. Batch sweep: width 64, 32 new tokens, ``--batches`` episodes per iteration
(one minibatch of the whole batch). Every setting runs ``rlhf.ppo.run_ppo`` in its own subprocess (the worker of
bench/ppo_vs_trl.py, one torch thread), settings interleaved, ``--repeats`` times; the first
iteration of each process is dropped. Exponents: least squares of log(median iteration time)
and of log(peak RSS of the process) on log(width), log(length) and log(batch). Peak RSS
includes the interpreter and libraries (~400 MB of fixed cost), so its exponents are small
until the models are big; the width sweep's two-term fit time = a + b * width^2 separates
the fixed per-op cost (a) from the matmul cost (b). The models are bench/ppo_vs_trl.py's (untrained, <end> made
unreachable), so every episode samples exactly the requested number of tokens at every
width (an untrained model would otherwise end at random, and more often the wider it is);
the mean response length is printed as a check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_vs_trl as pv  # noqa: E402


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--lengths", default="16,32,64,128")
    ap.add_argument("--batches", default="4,8,16,32")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    widths = [int(x) for x in a.widths.split(",")]
    lengths = [int(x) for x in a.lengths.split(",")]
    batches = [int(x) for x in a.batches.split(",") if x]
    base = dict(steps=a.steps, n_layer=2, epochs=4, n_positions=256, model="toy")
    settings = [("width", w, SimpleNamespace(**base, batch=8, n_embd=w, new_tokens=32)) for w in widths]
    settings += [("length", t, SimpleNamespace(**base, batch=8, n_embd=64, new_tokens=t)) for t in lengths
                 if t != 32 or 64 not in widths]
    settings += [("batch", b, SimpleNamespace(**base, batch=b, n_embd=64, new_tokens=32)) for b in batches
                 if b != 8 or 64 not in widths]
    dirs = {}
    for _, _, s in settings:
        if s.n_embd not in dirs:
            dirs[s.n_embd] = Path(tempfile.mkdtemp(prefix=f"ppo_growth_{s.n_embd}_"))
            pv.prepare(dirs[s.n_embd], 2, s.n_embd, 256)
    times: dict[tuple, list[float]] = {}
    lens: dict[tuple, list[float]] = {}
    mem: dict[tuple, list[float]] = {}
    for r in range(a.repeats):
        for kind, x, s in (settings if r % 2 == 0 else settings[::-1]):
            res = pv.run_side("ours", dirs[s.n_embd], s)
            key = (s.n_embd, s.new_tokens, s.batch)
            times.setdefault(key, []).extend(res["iter_s"])
            lens.setdefault(key, []).append(res["mean_response_len"])
            mem.setdefault(key, []).append(res["peak_rss_mb"])
            print(f"repeat {r} width {s.n_embd:>3} new tokens {s.new_tokens:>3} batch {s.batch:>3}: median "
                  f"{statistics.median(res['iter_s']) * 1e3:8.1f} ms/iteration", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    pk = {k: max(v) for k, v in mem.items()}
    print("\nPPO iteration (rollout + scoring + 4 epochs), 2 layers, one minibatch, one torch thread")
    print(f"{'width':>6} {'new tokens':>10} {'batch':>6} {'median ms':>10} {'min':>8} {'max':>8} {'n':>3} "
          f"{'mean length':>12} {'peak MB':>8}")
    for k in sorted(med):
        v = times[k]
        print(f"{k[0]:>6} {k[1]:>10} {k[2]:>6} {med[k] * 1e3:>10.1f} {min(v) * 1e3:>8.1f} {max(v) * 1e3:>8.1f} "
              f"{len(v):>3} {statistics.mean(lens[k]):>12.1f} {pk[k]:>8.0f}")
    sweeps = {"width": ([(w, 32, 8) for w in widths], 0), "length": ([(64, t, 8) for t in lengths], 1),
              "batch": ([(64, 32, b) for b in batches], 2)}
    out = {"points": [{"width": k[0], "new_tokens": k[1], "batch": k[2], "median_s": med[k], "min_s": min(times[k]),
                       "max_s": max(times[k]), "n": len(times[k]), "peak_rss_mb": pk[k],
                       "mean_response_len": statistics.mean(lens[k])} for k in sorted(med)],
           "load_1min": os.getloadavg()[0], "args": vars(a)}
    for name, (keys, i) in sweeps.items():
        keys = [k for k in keys if k in med]
        if len(keys) > 1:
            xs = [k[i] for k in keys]
            out[f"{name}_time_exponent"] = slope(xs, [med[k] for k in keys])
            out[f"{name}_memory_exponent"] = slope(xs, [pk[k] for k in keys])
            print(f"{name}: time ~ {name}^{out[f'{name}_time_exponent']:.2f}, "
                  f"peak RSS ~ {name}^{out[f'{name}_memory_exponent']:.2f}")
            if name == "width":  # time = a + b w^2 by least squares on (w^2, t)
                x2 = [float(x) ** 2 for x in xs]
                ys = [med[k] for k in keys]
                mx, my = statistics.mean(x2), statistics.mean(ys)
                b = sum((p - mx) * (q - my) for p, q in zip(x2, ys)) / sum((p - mx) ** 2 for p in x2)
                out["width_fit_a_s"], out["width_fit_b_s"] = my - b * mx, b
                print(f"  two-term fit: time = {out['width_fit_a_s'] * 1e3:.1f} ms + {b * 1e9:.3f} ns x width^2; "
                      f"the width^2 term equals the fixed term at width {((my - b * mx) / b) ** 0.5 if b > 0 and my > b * mx else float('nan'):.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
