"""Chat templates: the one place that decides the text a model reads.

A model whose tokenizer has a chat template (``tokenizer.chat_template``) is prompted the
way it was instruction-tuned, through ``tokenizer.apply_chat_template``; a model without
one (the toy world's scratch GPT-2, a base model) reads the prompt text as it is. The
run-config key ``model.chat_template`` decides (:func:`apply_setting`, once, where the run's
tokenizer is loaded): ``auto`` uses the template when the tokenizer has one, ``off`` removes
it from the run's tokenizer (so every stage, the saved stage tokenizers and the eval read
plain text), ``on`` requires one. After that every function here only asks
:func:`uses_chat`.

Three texts, each made in one function:

* :func:`prompt_text`: a prompt (a string, an HH-RLHF dialogue ``"\\n\\nHuman: ...
  \\n\\nAssistant:"``, or a list of messages) as the text the policy continues: with a
  template, the conversation (:func:`to_messages`) with the assistant's generation prompt;
  without one, the string itself.
* :func:`response_text`: a response body and whether it ended, as the text that stands for
  the response everywhere (``Samples.texts``, comparisons, samples files): with a template,
  the body followed by the template's end-of-turn token (:func:`end_of_turn`) when it
  ended; without one, the body then a space and the tokenizer's EOS text when it ended.
* :func:`rm_text`: what the reward model reads for a (prompt text, response text): with a
  template the two concatenated, i.e. the templated conversation [user: prompt, assistant:
  response] up to and including the end-of-turn token (cut there; a response that never
  ended has none); without one ``prompt + " " + response``. ``rlhf.reward.encode_pairs``
  tokenizes it: the reward model's one token sequence per (prompt, response), in RM
  training, PPO, best-of-n and the gold path.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Union

from .config import ConfigError

SETTINGS = ("auto", "on", "off")

Prompt = Union[str, Sequence[dict]]

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def uses_chat(tokenizer) -> bool:
    """Whether the tokenizer formats prompts through a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def apply_setting(tokenizer, setting: str, source: str = ""):
    """``model.chat_template`` applied to a run's tokenizer (in place; returned): ``off``
    removes its template, ``on`` without a template is a ConfigError (exit 2), ``auto``
    leaves it as it is."""
    if setting not in SETTINGS:
        raise ConfigError(f"model.chat_template={setting!r}: expected one of {', '.join(SETTINGS)}")
    if setting == "off":
        tokenizer.chat_template = None
    elif setting == "on" and not uses_chat(tokenizer):
        raise ConfigError(f"model.chat_template=on but the tokenizer of {source or 'the model'} has no chat "
                          f"template: use model.chat_template=auto (plain text) or a model with one")
    return tokenizer


def is_dialogue(text: str) -> bool:
    """An HH-RLHF dialogue prompt: Human/Assistant turns ending with an open ``Assistant:``."""
    return text.rstrip().endswith("Assistant:") and _TURN.search(text) is not None and "Human:" in text


def to_messages(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages. An HH-RLHF dialogue (``\\n\\nHuman: a\\n\\nAssistant: b
    \\n\\nHuman: c\\n\\nAssistant:``) becomes its turns (user a, assistant b, user c; the
    open last ``Assistant:`` is the generation prompt; consecutive turns of one speaker are
    joined by a blank line, since many templates require alternating roles); any other
    string is one user turn; a list of messages is returned as it is."""
    if not isinstance(prompt, str):
        return [dict(m) for m in prompt]
    if not is_dialogue(prompt):
        return [{"role": "user", "content": prompt.strip()}]
    parts = _TURN.split(prompt)
    msgs: list[dict] = []
    head = parts[0].strip()
    if head:
        msgs.append({"role": "user", "content": head})
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] = (msgs[-1]["content"] + "\n\n" + content).strip()
        else:
            msgs.append({"role": role, "content": content})
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()  # the open "Assistant:" the response continues
    return msgs


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """The text the policy continues for ``prompt``: the chat template applied to
    :func:`to_messages` with the generation prompt, or (no template) the string itself."""
    if not uses_chat(tokenizer):
        if not isinstance(prompt, str):
            raise ValueError("a list of messages needs a tokenizer with a chat template")
        return prompt
    return tokenizer.apply_chat_template(to_messages(prompt), tokenize=False, add_generation_prompt=True)


_SENTINEL = "\u2063RLHF\u2063"


def end_of_turn(tokenizer) -> Optional[str]:
    """The token text that ends an assistant turn: with a template, the first token the
    template writes after an assistant message when it is a special (added) token (SmolLM2
    and ChatML: ``<|im_end|>``; Llama 3: ``<|eot_id|>``), else the EOS text; without a
    template, the EOS text (None when the tokenizer has none)."""
    if not uses_chat(tokenizer):
        return tokenizer.eos_token
    cached = getattr(tokenizer, "_rlhf_end_of_turn", None)
    if cached is not None and cached[0] == tokenizer.chat_template:
        return cached[1]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}],
                                         tokenize=False)
    tail = text[text.rfind(_SENTINEL) + len(_SENTINEL):] if _SENTINEL in text else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    eot = tokenizer.convert_ids_to_tokens(ids[0]) if ids and ids[0] in special else tokenizer.eos_token
    try:
        tokenizer._rlhf_end_of_turn = (tokenizer.chat_template, eot)
    except AttributeError:
        pass
    return eot


def end_of_turn_id(tokenizer) -> Optional[int]:
    """The id of :func:`end_of_turn` (None without a template or without such a token)."""
    if not uses_chat(tokenizer):
        return None
    eot = end_of_turn(tokenizer)
    i = tokenizer.convert_tokens_to_ids(eot) if eot is not None else None
    return int(i) if i is not None and i != tokenizer.unk_token_id else None


def response_text(tokenizer, body: str, ended: bool) -> str:
    """The text standing for a response of ``body`` that ``ended`` (or was cut): with a
    template ``body + end_of_turn`` when it ended; without one ``body + " " + EOS`` (the toy
    world's ``... <end>``). A cut response is its body."""
    if not ended:
        return body
    if uses_chat(tokenizer):
        return body + (end_of_turn(tokenizer) or "")
    return f"{body} {tokenizer.eos_token or ''}".strip()


def split_response(tokenizer, text: str) -> tuple[str, bool]:
    """(body, ended) of a response text written by :func:`response_text` for ``tokenizer``."""
    end = end_of_turn(tokenizer) if uses_chat(tokenizer) else tokenizer.eos_token
    if end and text.endswith(end):
        return text[: len(text) - len(end)].rstrip() if not uses_chat(tokenizer) else text[: len(text) - len(end)], True
    return text, False


def gold_sequence(tokenizer, gold_tokenizer, prompt: Prompt, response: str) -> tuple[str, str]:
    """(prompt text, response text) for a reward model with its own tokenizer (the eval's
    gold reward model): the raw ``prompt`` through ``gold_tokenizer``'s template and the
    policy's ``response`` text (written for ``tokenizer``) as an ended or cut turn of
    ``gold_tokenizer``. With one tokenizer for both, the policy's own texts."""
    body, ended = split_response(tokenizer, response)
    return prompt_text(gold_tokenizer, prompt), response_text(gold_tokenizer, body, ended)


def rm_text(tokenizer, prompt: str, response: str) -> str:
    """What the reward model reads for a prompt text (:func:`prompt_text`) and a response
    text (:func:`response_text`): with a template the templated conversation, their
    concatenation; without one ``prompt + " " + response``."""
    return prompt + response if uses_chat(tokenizer) else prompt + " " + response


def comparison_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """Comparisons read from a file (complete responses, no end-of-turn text) in the text
    the reward model reads with a template: the prompt through :func:`prompt_text`, each
    response as an ended turn (:func:`response_text`). Without a template, unchanged."""
    if not uses_chat(tokenizer):
        return rows
    return [{**r, "prompt": prompt_text(tokenizer, r["prompt"]),
             "responses": [response_text(tokenizer, x.strip(), True) for x in r["responses"]]} for r in rows]


def demonstrations(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(prompt, response) demonstrations as (prompt text, ended response text) with a
    template, for the reward model's offset; without one, unchanged."""
    if not uses_chat(tokenizer):
        return pairs
    return [(prompt_text(tokenizer, p), response_text(tokenizer, r.strip(), True)) for p, r in pairs]
