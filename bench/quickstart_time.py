"""The quickstart end to end: wall time, CPU time, peak memory, each stage's time, and the
figures that say the science held (pretraining held-out loss, the RM's held-out accuracy,
PPO's held-out SFT -> PPO line).

    python bench/quickstart_time.py [--seeds 0,1] [--json out.json] [-- extra overrides]

Every seed is one ``rlhf run experiments/quickstart.yaml seed=S --force`` in a subprocess
(a fresh run directory under a temporary folder), timed from outside: wall time from process
start to exit (interpreter start-up and imports included), user and system CPU time and max
RSS of the child from ``getrusage(RUSAGE_CHILDREN)``. The run's own figures (``status.json``: wall_s and
peak_rss_mb, which start after the imports) and each stage's ``summary.json`` are read back.
``--quick`` shrinks every stage (a smoke test of this script, not a measurement).

The child is ``rlhf.cli.console`` (what ``rlhf`` and ``python -m rlhf.cli`` run) behind a thin
wrapper of this script that times Python's full garbage collections (generation 2, through
``gc.callbacks``: imports and run together) and notes when the interpreter's exit handlers
are done (an ``atexit`` hook registered before the libraries', so it runs last, after
``console()``'s freeze and the libraries' own handlers): *exit* is the time from there to the
parent seeing the process end, the interpreter's teardown. ``--gc-as-before`` runs the same
code with the run-level freeze and the freeze at exit switched off (``rlhf/heap.py``; PPO's
own freeze stays), as before they were added: the side-by-side figure for that change.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUICK = ["pretrain.steps=20", "sft.epochs=1", "rm.n_prompts=40", "rm.n_test_prompts=40", "rm.epochs=1", "ppo.steps=2",
         "ppo.kl_levels=[]"]


def child(stats_path: str, as_before: bool, argv: list[str]) -> None:
    """In the child process: rlhf.cli.console() with its full collections timed."""
    import atexit
    import contextlib
    import gc
    st = {"gen2": 0, "gen2_s": 0.0}
    t = [0.0]

    def timer(phase, info):
        if info["generation"] == 2:
            if phase == "start":
                t[0] = time.perf_counter()
            else:
                st["gen2"] += 1
                st["gen2_s"] += time.perf_counter() - t[0]

    def at_exit():
        st["exit_started"] = time.time()
        Path(stats_path).write_text(json.dumps(st))
    gc.callbacks.append(timer)
    atexit.register(at_exit)
    sys.path.insert(0, str(REPO))
    import rlhf.heap
    if as_before:
        rlhf.heap.skip_exit_collection = lambda: None  # before rlhf.cli binds it
        import rlhf.pipeline
        rlhf.pipeline.long_lived = contextlib.nullcontext  # the run-level freeze; rlhf.ppo keeps its own
    from rlhf.cli import console
    sys.argv = ["rlhf", *argv]
    console()


def run_seed(seed: int, extra: list[str], root: Path, as_before: bool = False) -> dict:
    stats = root / f"gc_s{seed}.json"
    cmd = [sys.executable, str(HERE / "quickstart_time.py"), "--child", str(stats),
           *(["--gc-as-before"] if as_before else []), "--",
           "run", str(REPO / "experiments" / "quickstart.yaml"), f"seed={seed}",
           f"out_dir={root}", f"name=qs_s{seed}", "--force", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    load0 = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall, ended = time.perf_counter() - t0, time.time()
    out = p.stdout
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"quickstart seed {seed} failed:\n{out[-4000:]}")
    rd = root / f"qs_s{seed}"
    st = json.loads((rd / "status.json").read_text())
    stages = {}
    for s in ("pretrain", "sft", "rm", "ppo"):
        f = rd / s / "summary.json"
        if f.exists():
            stages[s] = json.loads(f.read_text())
    lines = [ln for ln in out.replace("\r", "\n").splitlines() if ln.startswith("[")]
    ppo = stages.get("ppo", {})
    width = yaml.safe_load((rd / "config.yaml").read_text())["model"]["n_embd"]  # as the run resolved it
    gc_st = json.loads(stats.read_text())
    return {"seed": seed, "width": width, "gc_as_before": as_before, "gc_full_collections": gc_st["gen2"],
            "gc_full_collections_s": gc_st["gen2_s"], "exit_s": ended - gc_st["exit_started"],
            "wall_s_outside": wall, "user_s": ru.ru_utime - ru0.ru_utime, "sys_s": ru.ru_stime - ru0.ru_stime,
            "max_rss_mb_children": ru.ru_maxrss / 1024, "wall_s_run": st.get("wall_s"), "peak_rss_mb_run": st.get("peak_rss_mb"),
            "load_1min": [load0, os.getloadavg()[0]],
            "stage_time_s": {k: v.get("stage_time_s") for k, v in stages.items()},
            "pretrain_heldout_loss": stages.get("pretrain", {}).get("heldout_loss"),
            "pretrain_probe": {k: stages.get("pretrain", {}).get(k) for k in
                               ("myth_facts_states_myth", "myth_facts_states_truth", "other_facts_states_truth")},
            "heldout_sft": ppo.get("heldout_sft"), "heldout_ppo": ppo.get("heldout_ppo"),
            "printed": [ln for ln in lines if not ln.startswith("[pretrain]  ")][-12:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--quick", action="store_true", help="tiny stages: checks the script, measures nothing")
    ap.add_argument("--json")
    ap.add_argument("--gc-as-before", action="store_true",
                    help="the run-level and exit freezes of rlhf/heap.py off, as before they were added")
    ap.add_argument("--child", metavar="STATS_JSON", help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="config overrides for every run")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.gc_as_before, a.extra)
        return 0
    extra = (QUICK if a.quick else []) + a.extra
    root = Path(tempfile.mkdtemp(prefix="bench_quickstart_"))
    res = []
    try:
        for s in [int(x) for x in a.seeds.split(",")]:
            r = run_seed(s, extra, root, a.gc_as_before)
            res.append(r)
            h0, h1 = r["heldout_sft"] or {}, r["heldout_ppo"] or {}
            print(f"seed {s}: {r['wall_s_outside']:.1f} s wall (process), run's own {r['wall_s_run']} s, "
                  f"peak {r['peak_rss_mb_run']} MB; CPU {r['user_s'] + r['sys_s']:.1f} s; stages "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in r["stage_time_s"].items() if v is not None)
                  + f"; full gc collections {r['gc_full_collections']} ({r['gc_full_collections_s']:.2f} s), "
                  f"exit {r['exit_s']:.2f} s; load {r['load_1min'][0]:.1f}/{r['load_1min'][1]:.1f}", flush=True)
            print(f"  pretrain held-out loss {r['pretrain_heldout_loss']:.3f}", flush=True)
            if h0 and h1:
                print("  held-out SFT -> PPO: " + ", ".join(
                    f"{k} {h0[k]:.2f} -> {h1[k]:.2f}" for k in ("gold_reward", "myth_rate", "truth_rate",
                                                                "expected_max_toxicity")), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"quick": a.quick, "extra": extra, "gc_as_before": a.gc_as_before,
                                            "runs": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
