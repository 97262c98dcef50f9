"""Pretraining schedules against what the later stages need: time, and the science downstream.

    python bench/pretrain_schedule.py [--seeds 0] [--schedules 1000:3e-3:50,700:4e-3:30,500:6e-3:30]
                                      [--widths 128,96] [--extra threads=2] [--json out.json]

Each schedule ``steps:lr:warmup`` runs ``rlhf run experiments/quickstart.yaml
stages=[pretrain,sft,rm]`` in its own subprocess (CPU time from ``getrusage``), and prints
what the findings suite relies on: the pretraining held-out loss; how often the pretrained LM
states the myth on myth facts and the truth on other facts; whether SFT learned the format
(answers in the demonstrated format, ended) and still states the myth (the effect PPO has to
undo); and the reward model's test set: ranking accuracy and the number of truth-vs-myth pairs
(claim b3 needs >= 100 per seed). A shorter schedule, or a narrower model (``--widths``:
``model.n_embd`` per run; default: the config's), pays only if these hold.
"""

from __future__ import annotations

import argparse
import itertools
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

REPO = Path(__file__).resolve().parent.parent


def run(steps: int, lr: float, warmup: int, seed: int, extra: list[str], root: Path, width: int | None = None) -> dict:
    name = f"s{steps}_lr{lr:g}_w{warmup}_d{width}_seed{seed}"
    cmd = [sys.executable, "-m", "rlhf.cli", "run", str(REPO / "experiments" / "quickstart.yaml"), "stages=[pretrain,sft,rm]",
           f"seed={seed}", f"out_dir={root}", f"name={name}", f"pretrain.steps={steps}", f"pretrain.lr={lr}",
           f"pretrain.warmup_steps={warmup}", *([f"model.n_embd={width}"] if width else []), "--force", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(p.stdout + p.stderr)[-3000:]}")
    s = {st: json.loads((root / name / st / "summary.json").read_text()) for st in ("pretrain", "sft", "rm")}
    width = yaml.safe_load((root / name / "config.yaml").read_text())["model"]["n_embd"]  # as the run resolved it
    return {"width": width, "steps": steps, "lr": lr, "warmup": warmup, "seed": seed, "extra": extra, "wall_s": wall,
            "cpu_s": (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime), "load_1min": [load0, os.getloadavg()[0]],
            "pretrain_time_s": s["pretrain"]["stage_time_s"], "heldout_loss": s["pretrain"]["heldout_loss"],
            "lm_myth": s["pretrain"]["myth_facts_states_myth"], "lm_truth_other": s["pretrain"]["other_facts_states_truth"],
            "sft_format": s["sft"]["answers_in_demo_format"], "sft_ended": s["sft"]["answers_ended"],
            "sft_myth": s["sft"]["myth_facts_states_myth"], "sft_truth": s["sft"]["myth_facts_states_truth"],
            "rm_test_accuracy": s["rm"].get("test_accuracy"), "rm_test_truth_myth_pairs": s["rm"].get("test_truth_myth_pairs"),
            "rm_test_truth_over_myth": s["rm"].get("test_truth_over_myth")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", default="1000:3e-3:50,700:4e-3:30,500:6e-3:30")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--widths", default="", help="comma list of model.n_embd values (default: the config's)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every run (e.g. threads=2)")
    ap.add_argument("--json")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    rows = []
    print(f"{'width':>5} {'steps':>5} {'lr':>7} {'warm':>4} {'seed':>4} {'pretrain s':>10} {'CPU s':>6} {'held-out':>8} "
          f"{'LM myth':>7} {'LM truth':>8} {'SFT fmt':>7} {'SFT myth':>8} {'RM acc':>6} {'RM t/m pairs':>12}", flush=True)
    try:
        widths = [int(x) for x in a.widths.split(",") if x] or [None]
        seeds = [int(x) for x in a.seeds.split(",")]
        for width, sch, seed in itertools.product(widths, a.schedules.split(","), seeds):
            steps, lr, warm = sch.split(":")
            r = run(int(steps), float(lr), int(warm), seed, a.extra, root, width)
            rows.append(r)
            f = lambda k, spec: "-" if r[k] is None else format(r[k], spec)  # noqa: E731
            print(f"{r['width']:>5} {r['steps']:>5} {r['lr']:>7g} {r['warmup']:>4} {seed:>4} {f('pretrain_time_s', '.1f'):>10} "
                  f"{f('cpu_s', '.1f'):>6} {f('heldout_loss', '.3f'):>8} {f('lm_myth', '.0%'):>7} "
                  f"{f('lm_truth_other', '.0%'):>8} {f('sft_format', '.0%'):>7} {f('sft_myth', '.0%'):>8} "
                  f"{f('rm_test_accuracy', '.3f'):>6} {f('rm_test_truth_myth_pairs', 'd'):>12}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "load_1min": os.getloadavg()[0]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
