"""How our PPO iteration time grows with model width and with response length.

    python bench/ppo_growth.py [--widths 64,128,256,512] [--lengths 16,32,64,128] [--steps 4] [--repeats 2]

Width sweep: 2 layers, batch 8, 32 new tokens, 4 PPO epochs over one minibatch (the
bench/ppo_vs_trl.py setting), width in ``--widths`` (4 heads). Length sweep: width 64,
``--lengths`` new tokens. Position embeddings are 256 everywhere so that the longest
response fits. Every setting runs ``rlhf.ppo.run_ppo`` in its own subprocess (the worker of
bench/ppo_vs_trl.py, one torch thread), settings interleaved, ``--repeats`` times; the first
iteration of each process is dropped. Exponents: least squares of log(median iteration time)
on log(width) and log(length). The models are bench/ppo_vs_trl.py's (untrained, <end> made
unreachable), so every episode samples exactly the requested number of tokens at every
width (an untrained model would otherwise end at random, and more often the wider it is);
the mean response length is printed as a check.
"""

from __future__ import annotations

import argparse
import json
import math
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
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    widths = [int(x) for x in a.widths.split(",")]
    lengths = [int(x) for x in a.lengths.split(",")]
    base = dict(steps=a.steps, n_layer=2, batch=8, epochs=4, n_positions=256)
    settings = [("width", w, SimpleNamespace(**base, n_embd=w, new_tokens=32)) for w in widths]
    settings += [("length", t, SimpleNamespace(**base, n_embd=64, new_tokens=t)) for t in lengths if t != 32 or 64 not in widths]
    dirs = {}
    for _, _, s in settings:
        if s.n_embd not in dirs:
            dirs[s.n_embd] = Path(tempfile.mkdtemp(prefix=f"ppo_growth_{s.n_embd}_"))
            pv.prepare(dirs[s.n_embd], 2, s.n_embd, 256)
    times: dict[tuple, list[float]] = {}
    lens: dict[tuple, list[float]] = {}
    for r in range(a.repeats):
        for kind, x, s in (settings if r % 2 == 0 else settings[::-1]):
            res = pv.run_side("ours", dirs[s.n_embd], s)
            key = (s.n_embd, s.new_tokens)
            times.setdefault(key, []).extend(res["iter_s"])
            lens.setdefault(key, []).append(res["mean_response_len"])
            print(f"repeat {r} width {s.n_embd:>3} new tokens {s.new_tokens:>3}: median "
                  f"{statistics.median(res['iter_s']) * 1e3:8.1f} ms/iteration", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nPPO iteration (rollout + scoring + 4 epochs), 2 layers, batch 8, one torch thread")
    print(f"{'width':>6} {'new tokens':>10} {'median ms':>10} {'min':>8} {'max':>8} {'n':>3} {'mean length':>16}")
    for k in sorted(med):
        v = times[k]
        print(f"{k[0]:>6} {k[1]:>10} {med[k] * 1e3:>10.1f} {min(v) * 1e3:>8.1f} {max(v) * 1e3:>8.1f} {len(v):>3} "
              f"{statistics.mean(lens[k]):>16.1f}")
    wk = [(w, 32) for w in widths if (w, 32) in med]
    lk = [(64, t) for t in lengths if (64, t) in med]
    out = {"median_s": {f"{k[0]}x{k[1]}": v for k, v in med.items()}}
    if len(wk) > 1:
        out["width_exponent"] = slope([k[0] for k in wk], [med[k] for k in wk])
        print(f"width exponent (T=32):  time ~ width^{out['width_exponent']:.2f}")
    if len(lk) > 1:
        out["length_exponent"] = slope([k[1] for k in lk], [med[k] for k in lk])
        print(f"length exponent (width 64): time ~ T^{out['length_exponent']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
