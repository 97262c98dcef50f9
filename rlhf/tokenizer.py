"""The toy world's word-level tokenizer, trained with the `tokenizers` library."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .world import EOS, PAD, SPECIAL_TOKENS, UNK, World


def train_world_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """Train a WordLevel tokenizer on the world's corpus and every word it can produce.

    The special tokens are given to the trainer only (never in the training text), and
    the ids are checked to be contiguous 0..V-1: a WordLevelTrainer fed a special token
    that also occurs in the text can leave a hole in the id range.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False)
    texts = world.corpus() + [" ".join(world.vocabulary_words())]
    texts = [t.replace(EOS, " ") for t in texts]
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = tok.get_vocab()
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        raise RuntimeError(f"tokenizer ids are not contiguous (missing {missing[:10]})")
    for i, s in enumerate(SPECIAL_TOKENS):
        if vocab.get(s) != i:
            raise RuntimeError(f"special token {s} has id {vocab.get(s)}, expected {i}")
    missing_words = [w for w in world.vocabulary_words() if w not in vocab]
    if missing_words:
        raise RuntimeError(f"tokenizer misses world words: {missing_words[:10]}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=10**6,
    )


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | Path) -> None:
    tok.save_pretrained(str(directory))
