"""Chat templates (rlhf/chat.py): prompts, SFT examples and reward-model sequences through
the tokenizer's template, and one token sequence per (prompt, response) for the reward
model on every path. The models here are a tiny Llama with the toy world's word-level
tokenizer, given ChatML-like special tokens and a chat template in the test."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from rlhf import chat
from rlhf.config import ConfigError, WorldConfig
from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer, save_hf
from rlhf.tokenizer import train_world_tokenizer
from rlhf.world import World

from conftest import REPO

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    """(folder, tokenizer, policy, reward model, world): a 1-layer Llama whose tokenizer has a
    chat template; the reward model is the same network with a seeded random head, saved
    (``rm/``: the eval's gold reward model is this one, loaded again)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    d = tmp_path_factory.mktemp("chat")
    world = World(WorldConfig(n_entities=12, corpus_docs=200))
    tok = train_world_tokenizer(world)
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.add_tokens(["user", "assistant", "system"])
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    save_hf(LlamaForCausalLM(cfg), tok, d / "model")
    tok = load_tokenizer(str(d / "model"))
    policy = load_causal_lm(str(d / "model")).eval()
    torch.manual_seed(1)
    rm = load_reward_model(str(d / "model"))
    rm.config.pad_token_id = tok.pad_token_id
    save_hf(rm, tok, d / "rm")
    rm = load_reward_model(str(d / "rm")).eval()
    return d, tok, policy, rm, world


def test_hh_dialogues_become_messages():
    d = "\n\nHuman: hi there\n\nAssistant: hello .\n\nHuman: why ?\n\nHuman: tell me\n\nAssistant:"
    assert chat.to_messages(d) == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello ."},
                                   {"role": "user", "content": "why ?\n\ntell me"}]
    assert chat.to_messages("what is two plus two ?") == [{"role": "user", "content": "what is two plus two ?"}]
    msgs = [{"role": "user", "content": "x"}]
    assert chat.to_messages(msgs) == msgs


def test_setting_auto_on_off(chat_models):
    _, tok, *_ = chat_models
    world_tok = train_world_tokenizer(World(WorldConfig(n_entities=12, corpus_docs=50)))
    with pytest.raises(ConfigError, match="no chat template"):
        chat.apply_setting(world_tok, "on", "scratch")
    assert chat.apply_setting(world_tok, "auto") is world_tok and not chat.uses_chat(world_tok)
    # no template: the toy world's texts, unchanged
    assert chat.prompt_text(world_tok, "q ?") == "q ?"
    assert chat.response_text(world_tok, "a .", True) == "a . <end>" and chat.response_text(world_tok, "a", False) == "a"
    assert chat.rm_text(world_tok, "q ?", "a . <end>") == "q ? a . <end>"
    import copy
    t = copy.deepcopy(tok)
    chat.apply_setting(t, "on")
    assert chat.uses_chat(t) and chat.end_of_turn(t) == "<|im_end|>"
    chat.apply_setting(t, "off")
    assert not chat.uses_chat(t) and chat.prompt_text(t, "q ?") == "q ?" and chat.end_of_turn(t) == t.eos_token


def test_end_of_turn_ends_a_response(chat_models):
    from rlhf.sampling import eos_ids, sample
    _, tok, policy, _, world = chat_models
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert eot in eos_ids(tok, policy) and tok.eos_token_id in eos_ids(tok, policy)
    prompts = [chat.prompt_text(tok, p.text) for p in world.prompts()[:16]]
    assert prompts[0].startswith("<|im_start|>user\n") and prompts[0].endswith("<|im_start|>assistant\n")
    s = sample(policy, tok, prompts, 12, n=4, seed=0)
    assert 0 < int(s.ended.sum()) < len(s.texts)  # both kinds occur
    for ids, m, e, text, body in zip(s.response_ids.tolist(), s.response_mask.tolist(), s.ended.tolist(), s.texts,
                                     s.bodies):
        last = [t for t, k in zip(ids, m) if k][-1]
        assert e == (last in eos_ids(tok, policy))
        assert text == (body + "<|im_end|>" if e else body)


def test_sft_examples_are_templated_with_the_loss_on_the_assistant_turn(chat_models):
    from rlhf.sft import _Examples
    _, tok, *_ = chat_models
    ex = _Examples(tok, [("\n\nHuman: you are a\n\nAssistant:", "friend .")], 256).items[0]
    ids, labels = ex["input_ids"], ex["labels"]
    full = tok.apply_chat_template([{"role": "user", "content": "you are a"},
                                    {"role": "assistant", "content": "friend ."}], tokenize=False)
    assert ids == tok(full, add_special_tokens=False)["input_ids"][:len(ids)]
    n_prompt = sum(1 for x in labels if x == -100)
    assert tok.convert_ids_to_tokens(ids[n_prompt - 2:n_prompt]) == ["<|im_start|>", "assistant"]
    assert tok.convert_ids_to_tokens(labels[n_prompt:]) == ["friend", ".", "<|im_end|>"]


def test_rm_gives_the_same_score_on_every_path(chat_models, tmp_path):
    """The same (prompt, response) gets the same reward-model score on every path: RM
    training's encoding of a comparison read from an HH-RLHF file (ended responses) and of
    sampled rows, PPO's score_rollout on real sampled Samples, the eval's best-of-n / RL
    rm_score, and the eval's gold path with this RM as the gold; the sequence is the
    templated conversation ending at the end-of-turn token (read there) when the response
    ended, cut without it otherwise."""
    from rlhf_eval import overopt
    from rlhf_eval.settings import make_settings
    from rlhf_eval.suite import _gold_rm_prompts_and_gold
    from rlhf.data import load_pair_comparisons
    from rlhf.ppo import score_rollout
    from rlhf.reward import encode_pairs, rm_max_length, score_batch
    d, tok, policy, rm, world = chat_models
    raw = [f"\n\nHuman: {p.text}\n\nAssistant: ok .\n\nHuman: {q.text}\n\nAssistant:"
           for p, q in zip(world.prompts()[:12], world.prompts()[12:24])]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in raw))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"name: chat\nppo:\n  data: {tmp_path / 'prompts.jsonl'}\n")
    ctx = SimpleNamespace(s=make_settings([f"gold_rm={d / 'rm'}", "overopt_n_prompts=8"]),
                          target=SimpleNamespace(run_dir=run), device=torch.device("cpu"))
    prompts, gold = _gold_rm_prompts_and_gold(ctx, random.Random(0), tok)
    max_len = rm_max_length(rm, 512)
    r = overopt.evaluate_policy(policy, policy, rm, tok, prompts, gold, n=4, max_new_tokens=12, seed=0,
                                rm_max_len=max_len, progress=False)
    s = r["samples"]
    ended = s.ended
    assert 0 < int(ended.sum()) < len(s.texts)
    eval_side = torch.tensor(r["rm_score_all"], dtype=torch.float32)
    gold_side = torch.tensor(r["gold_reward_all"], dtype=torch.float32)
    with torch.no_grad():
        ppo_side, _ = score_rollout(rm, tok, s, max_len, -1.0)
        rows = [{"prompt": p, "responses": [t]} for p, t in zip(s.prompts, s.texts)]
        sampled_side = score_batch(rm, tok, rows, torch.device("cpu"), max_len)[0][:, 0]
        # an HH-RLHF file of the ended responses, read as RM training reads rm.data
        by_prompt = {chat.prompt_text(tok, p): p for p in raw}
        idx = [i for i in range(len(s.texts)) if ended[i]]
        lines = [{"chosen": by_prompt[s.prompts[i]] + " " + s.bodies[i],
                  "rejected": by_prompt[s.prompts[i]] + " zzz"} for i in idx]
        (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        comps = chat.comparison_rows(tok, load_pair_comparisons(str(tmp_path / "pairs.jsonl")))
        file_side = score_batch(rm, tok, comps, torch.device("cpu"), max_len)[0][:, 0]
    for other in (ppo_side, sampled_side, gold_side):
        assert torch.allclose(other, eval_side, atol=1e-5)
    assert torch.allclose(file_side, eval_side[idx], atol=1e-5)
    assert len(set(eval_side.tolist())) > len(eval_side) // 2  # distinct sequences, distinct scores
    # the sequence: the templated conversation, up to and including the end-of-turn token when it ended
    ids, mask = encode_pairs(tok, s.prompts, s.texts, max_len)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    for j in range(len(s.texts)):
        seq = ids[j][mask[j].bool()].tolist()
        conv = chat.to_messages(by_prompt[s.prompts[j]]) + [{"role": "assistant", "content": s.bodies[j]}]
        full = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
        if ended[j]:
            assert seq[-1] == eot and full[:len(seq)] == seq and full[len(seq):] == []  # the template's "\n" is no token
        else:
            assert eot not in seq[-1:] and full[:len(seq)] == seq and full[len(seq)] == eot


def test_rm_train_layers_freezes_all_but_the_top_blocks_and_the_head(chat_models):
    from rlhf.reward import freeze_lower_layers
    d, tok, *_ = chat_models
    rm = load_reward_model(str(d / "rm"))
    assert len(freeze_lower_layers(rm, -1)) == len(list(rm.parameters()))
    trained = {id(p) for p in freeze_lower_layers(rm, 0)}
    names = {n for n, p in rm.named_parameters() if id(p) in trained}
    assert names == {"score.weight", "model.norm.weight"}
    assert not any(p.requires_grad for n, p in rm.named_parameters() if n not in names)
    trained = {id(p) for p in freeze_lower_layers(rm, 1)}  # the one block of this model too
    names = {n for n, p in rm.named_parameters() if id(p) in trained}
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.embed_tokens.weight" not in names


def test_rm_line_prints_the_heldout_accuracy_with_its_bootstrap_ci(chat_models):
    """evaluate_rm's accuracy CI is rlhf.stats.bootstrap_ci over prompts, and the RM stage's
    summary line prints it."""
    import numpy as np
    from rlhf.reward import _rm_line, evaluate_rm, rm_max_length
    from rlhf.stats import bootstrap_ci
    _, tok, _, rm, world = chat_models
    rows = [{"prompt": chat.prompt_text(tok, p.text), "responses": [chat.response_text(tok, "a .", True),
                                                                     chat.response_text(tok, "b", False)]}
            for p in world.prompts()[:20]]
    m = evaluate_rm(rm, tok, rows, torch.device("cpu"), rm_max_length(rm, 512))
    assert m["pairs"] == 20
    from rlhf.reward import score_batch
    with torch.no_grad():
        r, _ = score_batch(rm, tok, rows, torch.device("cpu"), 512)
    right = (r[:, 0] > r[:, 1]).float().numpy()
    assert m["accuracy"] == pytest.approx(right.mean())
    lo, hi = bootstrap_ci(np.stack([right, np.ones_like(right)], 1), lambda x: x[:, 0].sum() / x[:, 1].sum())
    assert (m["accuracy_ci_low"], m["accuracy_ci_high"]) == pytest.approx((lo, hi))
    assert f"[95% CI {lo:.3f}, {hi:.3f}] over 20 pairs" in _rm_line(2, m, {})


def test_chat_template_on_without_a_template_exits_2(tmp_path):
    """model.chat_template=on with the toy world's tokenizer (no template): exit 2 with a
    message naming the key; YAML's bare on/off are read as the words."""
    import subprocess
    import sys
    from rlhf.config import load_config
    assert load_config(REPO / "experiments" / "quickstart.yaml", ["model.chat_template=off"]).model.chat_template == "off"
    p = subprocess.run([sys.executable, "-m", "rlhf.cli", "run", str(REPO / "experiments" / "quickstart.yaml"),
                        f"out_dir={tmp_path}", "model.chat_template=on", "world.corpus_docs=50", "threads=1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "model.chat_template=on" in p.stderr + p.stdout and "no chat" in p.stderr + p.stdout
