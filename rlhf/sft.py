"""Stage 2: supervised fine-tuning on demonstrations, with transformers' Trainer.

The loss is on response tokens only (prompt tokens are labelled -100); with a chat
template (``model.chat_template``) on the assistant turn of the templated conversation,
its end-of-turn token included. Mixed precision (``model.autocast``: the Trainer's
bf16/fp16) and gradient checkpointing (``model.gradient_checkpointing``) are off by
default: on a CPU they make a small model 3-8x slower; they are for memory on large models.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import ProgressCallback, Trainer, TrainerCallback, TrainingArguments

from . import tracking
from .config import DataError, RunConfig, stage_seed
from .chat import prompt_text, response_text, uses_chat
from .data import load_demonstration_file
from .models import check_context, context_length, load_causal_lm, save_hf
from .rundir import MODEL_POINTER, RunDir, atomic_write_json
from .sampling import probe_world
from .world import World


def load_demonstrations(cfg: RunConfig, world: World | None) -> list[tuple[str, str]]:
    """(prompt, response) pairs: the toy world's demonstrations, or a JSONL file with
    ``prompt``/``response`` fields (or HH-RLHF style ``chosen`` dialogues), read and checked
    by :func:`rlhf.data.load_demonstration_file`."""
    src = cfg.sft.data
    if src == "world":
        pairs = [(p.text, r) for p, r in world.demonstrations()]
        if cfg.sft.max_examples:
            pairs = pairs[: cfg.sft.max_examples]
    else:  # a local file or a hub dataset, read and checked like every data file
        pairs = load_demonstration_file(src, cfg.sft.max_examples)
    if not pairs:
        raise DataError(f"sft.data={src}: no demonstrations found")
    return pairs


class _Examples(torch.utils.data.Dataset):
    """Tokenized demonstrations, the loss on the response only. With a chat template the
    prompt is the templated conversation with the assistant's generation prompt
    (``rlhf.chat.prompt_text``) and the labelled part the assistant turn with its
    end-of-turn token (``rlhf.chat.response_text``); without one, ``prompt`` then
    `` response`` with the EOS text appended."""

    def __init__(self, tokenizer, pairs, max_len):
        self.items = []
        eos = tokenizer.eos_token
        chat = uses_chat(tokenizer)
        for prompt, resp in pairs:
            if chat:
                p_ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
                r_ids = tokenizer(response_text(tokenizer, resp.strip(), True), add_special_tokens=False)["input_ids"]
                self.items.append({"input_ids": (p_ids + r_ids)[:max_len],
                                   "labels": ([-100] * len(p_ids) + r_ids)[:max_len]})
                continue
            if not resp.rstrip().endswith(eos):
                resp = resp.rstrip() + " " + eos if " " in prompt else resp + eos
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r_ids = tokenizer(" " + resp.strip(), add_special_tokens=False)["input_ids"]
            ids = (p_ids + r_ids)[:max_len]
            labels = ([-100] * len(p_ids) + r_ids)[:max_len]
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _collate(pad_id):
    def fn(batch):
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return fn


class _Bar(ProgressCallback):
    """Trainer's progress bar, named, without its printed log dicts (they go to metrics.jsonl)."""

    def on_train_begin(self, args, state, control, **kw):
        super().on_train_begin(args, state, control, **kw)
        if self.training_bar is not None:
            self.training_bar.set_description("sft")

    def on_log(self, args, state, control, logs=None, **kw):
        pass


class _JsonlLogger(TrainerCallback):
    def __init__(self, path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kw):
        if logs:
            row = {"step": state.global_step, **logs}
            tracking.metrics(self.path, row)


def run_sft(cfg: RunConfig, rd: RunDir, init_path: str, tokenizer, world: World | None, device: torch.device) -> dict:
    sc = cfg.sft
    out = rd.begin_stage("sft")
    t0 = time.time()
    if sc.skip:  # the init model is the SFT policy: a pointer to it, not a copy (rlhf.rundir.stage_model)
        target = str(Path(init_path).resolve()) if Path(init_path).exists() else init_path  # a folder, or a hub name
        atomic_write_json(out / MODEL_POINTER, {"path": target})
        print(f"[sft] skipped (sft.skip): the SFT policy is {target}")
        return {"skipped": True, "init": init_path, "points_to": target, "time_s": time.time() - t0}
    model = load_causal_lm(init_path, dtype=cfg.model.dtype, device=device,
                           attn_implementation=cfg.model.attn_implementation)
    pairs = load_demonstrations(cfg, world)
    check_context(tokenizer, model, [prompt_text(tokenizer, p) for p, _ in pairs], "sft prompts")
    ds = _Examples(tokenizer, pairs, context_length(model) or 2048)
    print(f"[sft] {len(ds)} demonstrations, {sc.epochs} epochs from {init_path}")
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=sc.batch_size, num_train_epochs=sc.epochs,
        learning_rate=sc.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        logging_steps=5, save_strategy="no", report_to=[], bf16=cfg.model.autocast == "bf16",
        fp16=cfg.model.autocast == "fp16", activation_checkpointing=cfg.model.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.model.gradient_checkpointing else None,
        use_cpu=device.type == "cpu", seed=stage_seed(cfg.seed, "sft"),
        data_seed=stage_seed(cfg.seed, "sft"), dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=False, max_grad_norm=1.0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=_collate(tokenizer.pad_token_id),
                      callbacks=[_JsonlLogger(out / "metrics.jsonl")])
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_Bar(max_str_len=100))
    result = trainer.train()
    model = trainer.model
    model.eval()
    import shutil
    shutil.rmtree(out / "trainer", ignore_errors=True)
    save_hf(model, tokenizer, out)
    summary = {"train_loss": result.training_loss, "n_demos": len(ds), "time_s": time.time() - t0, "init": init_path}
    if world is not None and cfg.sft.data == "world":
        probe = probe_world(model, tokenizer, world)
        summary.update(probe)
        print(f"[sft] answers in the demonstrated format {probe['answers_in_demo_format']:.0%}, ended "
              f"{probe['answers_ended']:.0%}; myth facts: myth {probe['myth_facts_states_myth']:.0%}, "
              f"truth {probe['myth_facts_states_truth']:.0%}; chat toxic {probe['chat_toxic']:.0%}")
    return summary
