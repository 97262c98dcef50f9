"""Shared fixtures. Hubs are unreachable here: fail fast instead of retrying."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent

# A tiny but complete toy-world run: seconds, not minutes.
TINY = [
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_positions=64",
    "world.corpus_docs=400", "world.n_entities=12", "world.n_demos=24",
    "pretrain.steps=150", "pretrain.batch_size=16", "pretrain.seq_len=32", "pretrain.lr=5e-3",
    "sft.epochs=3", "rm.n_prompts=48", "rm.epochs=1", "rm.k=3",
    "ppo.steps=6", "ppo.batch_size=8", "ppo.minibatch_size=4", "ppo.epochs=2", "ppo.checkpoint_every=2",
    "ppo.max_new_tokens=8", "rm.max_new_tokens=8", "ppo.kl_levels=[0.01,0.1]", "threads=1",
]


def tiny_overrides(out_dir, name="tiny", extra=()):
    return TINY + [f"out_dir={out_dir}", f"name={name}"] + list(extra)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny run through the reward model (pretrain, sft, rm), built once per session."""
    from rlhf.config import load_config
    from rlhf.pipeline import run_pipeline
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(REPO / "experiments" / "quickstart.yaml", tiny_overrides(out, extra=["stages=[pretrain,sft,rm]"]))
    path = run_pipeline(cfg)
    return path, cfg


QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")


def copy_run(tiny_run, dst):
    """A copy of the session's tiny run (``tiny_run``) under ``dst``, for a test that changes it."""
    import shutil
    path, _ = tiny_run
    shutil.copytree(path, dst / "tiny")
    return dst / "tiny"


def ppo_cfg(out, extra=()):
    """The quickstart config at the tiny sizes, PPO stage only (``extra``: more overrides)."""
    from rlhf.config import load_config
    return load_config(QUICKSTART, tiny_overrides(out, extra=["stages=[ppo]", *extra]))


def rlhf_cmd():
    return [sys.executable, "-m", "rlhf.cli"]
