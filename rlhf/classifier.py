"""The classifier stage: a sequence classifier trained on labelled texts (``classifier.*``).

Its output, ``<run>/classifier``, is a Hugging Face ``AutoModelForSequenceClassification``
folder with its tokenizer and label names (``classifier.labels``), so any reward spec can
point at it: ``ppo.reward=classifier`` (or ``hf:<run>/classifier`` from elsewhere, and the
eval's ``gold_rm``). ``experiments/imdb_sentiment.yaml`` trains a sentiment classifier on
IMDB reviews here and PPO steers a policy towards its positive logit.

Training: the model starts from ``classifier.init`` (default ``model.source``, or the
pretrain stage for a scratch model; ``classifier.n_layers`` keeps only its first layers;
``scratch``: a GPT-2 of the ``model.*`` scratch shape on the run's tokenizer, from random
weights) with a fresh head of
``len(classifier.labels)`` outputs; cross-entropy on its logits, AdamW with a linear decay, gradient clipping at 1.
Texts are read as the reward reads them (``rlhf.rewards.classifier_forward``: its own
tokenizer, cut to its last ``classifier.max_length`` tokens). Held-out texts (rows whose ``split``
is test/validation, else a seeded share) are never trained on; their accuracy
(:func:`accuracy`) is in the summary and every held-out prediction in
``heldout_predictions.jsonl.gz`` (for a bootstrap CI: ``bench/imdb_sentiment.py``).
"""

from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

from . import tracking
from .config import DataError, RunConfig, stage_seed
from .data import load_labelled_texts
from .errors import check_finite
from .models import DTYPES, load_tokenizer, no_dropout, resolve_source, save_hf
from .rewards import classifier_forward, classifier_logits
from .rundir import RunDir, write_jsonl_gz


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of texts whose highest logit is their label:

        acc = 1/N Σ_i 1[argmax_j z_ij = y_i]      (nan for N = 0)
    """
    if len(labels) == 0:
        return float("nan")
    return int((logits.argmax(-1) == labels).sum()) / len(labels)


def split_labelled(rows: list[dict], max_train: int, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) rows. Held out: the rows marked ``heldout`` (a test/validation
    split) when there are any, else a seeded share of ``n_heldout`` rows; then a seeded
    sample of ``n_heldout`` of them, and of ``max_train`` (0 = all) training rows."""
    rng = random.Random(seed)
    marked = [r for r in rows if r["heldout"]]
    if marked:
        train = [r for r in rows if not r["heldout"]]
        held = marked
    else:
        order = list(range(len(rows)))
        rng.shuffle(order)
        cut = min(n_heldout, len(rows) // 5)
        held, train = [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]
    held = rng.sample(held, min(n_heldout, len(held)))
    train = rng.sample(train, min(max_train, len(train))) if max_train else train[:]
    rng.shuffle(train)
    return train, held


def load_classifier_model(init: str, labels: list[str], dtype: str, device, attn_implementation: str,
                          tokenizer=None, shape=None, n_layers: int = 0):
    """A sequence classifier with a fresh head of ``len(labels)`` outputs named ``labels``:
    from the model ``init``, or, ``init="scratch"``, a GPT-2 of the ``model.*`` scratch shape
    (``shape``: a ModelConfig) on ``tokenizer``'s vocabulary, trained from random weights."""
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification
    from .errors import SourceError
    if init == "scratch":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=shape.n_positions, n_embd=shape.n_embd,
                            n_layer=shape.n_layer, n_head=shape.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, summary_first_dropout=0.0, num_labels=len(labels),
                            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                            pad_token_id=tokenizer.pad_token_id, activation_function="gelu_pytorch_tanh")
        config._attn_implementation = attn_implementation
        return GPT2ForSequenceClassification(config).to(DTYPES[dtype]).to(device)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if n_layers:  # the first n_layers layers (the config's num_hidden_layers; GPT-2 maps it to n_layer)
        from transformers import AutoConfig
        have = AutoConfig.from_pretrained(resolve_source(init)).num_hidden_layers
        if n_layers > have:
            raise SourceError(f"classifier.n_layers={n_layers}: {init} has only {have} layers")
        kw["num_hidden_layers"] = n_layers
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_source(init), dtype=DTYPES[dtype], num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, **kw)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot build a classifier from {init!r}: {e}") from None
    return no_dropout(model).to(device)


def run_classifier_stage(cfg: RunConfig, rd: RunDir, init: str, device, tokenizer=None) -> dict:
    """Train the classifier from ``init`` on ``classifier.data`` into ``<run>/classifier``;
    returns the summary (held-out and train accuracy, loss, sizes). ``tokenizer``: used when
    ``init`` has none saved (a scratch model on the toy world's tokenizer)."""
    cc = cfg.classifier
    if not cc.data:
        raise DataError("stage 'classifier' needs classifier.data: a JSONL file of text/label rows")
    out = rd.begin_stage("classifier")
    t0 = time.time()
    seed = stage_seed(cfg.seed, "classifier")
    torch.manual_seed(seed)
    rows = load_labelled_texts(cc.data, len(cc.labels))
    train, held = split_labelled(rows, cc.max_examples, cc.n_heldout, seed)
    if not train:
        raise DataError(f"classifier.data={cc.data}: no training rows left after holding out {len(held)}")
    if init == "scratch":
        if tokenizer is None:
            raise DataError("classifier.init=scratch needs the run's tokenizer")
        if cc.max_length > cfg.model.n_positions:
            raise DataError(f"classifier.max_length={cc.max_length} exceeds the scratch classifier's context "
                            f"model.n_positions={cfg.model.n_positions}")
        tok = tokenizer
    else:
        try:
            tok = load_tokenizer(init)
        except Exception:  # noqa: BLE001 - no tokenizer saved with the init model
            if tokenizer is None:
                raise
            tok = tokenizer
    model = load_classifier_model(init, cc.labels, cfg.model.dtype, device, cfg.model.attn_implementation,
                                  tok, cfg.model, cc.n_layers)
    model.config.pad_token_id = tok.pad_token_id
    counts = [sum(r["label"] == i for r in train) for i in range(len(cc.labels))]
    print(f"[classifier] {len(train)} training texts (by label: {counts}), {len(held)} held out, "
          f"{cc.epochs} epoch(s) from {init}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cc.lr, weight_decay=0.0)
    n_steps = cc.epochs * ((len(train) + cc.batch_size - 1) // cc.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(1, n_steps)))
    rng = random.Random(seed)
    bar = tqdm(total=n_steps, desc="classifier", mininterval=2.0)
    step = 0
    for epoch in range(cc.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order), cc.batch_size):
            batch = [train[j] for j in order[i:i + cc.batch_size]]
            model.train()
            logits = classifier_forward(model, tok, [r["text"] for r in batch], cc.max_length, device)
            y = torch.tensor([r["label"] for r in batch], device=device)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            check_finite("classifier loss", loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            row = {"step": step, "epoch": epoch, "loss": loss.item(),
                   "accuracy": accuracy(logits.detach().cpu(), y.cpu()), "time_s": time.time() - t0}
            tracking.metrics(out / "metrics.jsonl", row)
            step += 1
            bar.update(1)
    bar.close()
    model.eval()
    t1 = time.time()
    held_logits = classifier_logits(model, tok, [r["text"] for r in held], cc.max_length)
    held_y = torch.tensor([r["label"] for r in held])
    sub = train[:min(len(train), len(held), 512)]
    train_acc = accuracy(classifier_logits(model, tok, [r["text"] for r in sub], cc.max_length),
                         torch.tensor([r["label"] for r in sub]))
    write_jsonl_gz(out / "heldout_predictions.jsonl.gz",
                   [{"label": int(y), "pred": int(z.argmax()), "logits": [float(v) for v in z]}
                    for y, z in zip(held_y, held_logits)])
    save_hf(model, tok, out)
    summary = {"heldout_accuracy": accuracy(held_logits, held_y), "n_heldout": len(held),
               "train_accuracy": train_acc, "n_train_eval": len(sub), "n_train": len(train), "steps": step,
               "labels": list(cc.labels), "init": init, "time_s": time.time() - t0, "eval_time_s": time.time() - t1}
    print(f"[classifier] held-out accuracy {summary['heldout_accuracy']:.3f} on {len(held)} texts "
          f"(train {train_acc:.3f} on {len(sub)}) after {step} steps in {summary['time_s']:.0f}s", flush=True)
    return summary

