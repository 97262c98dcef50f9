"""Scratch measurement behind a line of the issue-12 note: one quickstart-size pretraining step
(GPT-2 2 layers, width 128, batch 32 x 64, one thread) in fp32 against bf16 autocast, three
alternating repeats of 20 steps; prints ms/step. Not part of PERFORMANCE.md (run on a loaded
machine: read the ratio only)."""
import time, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.set_num_threads(1)
cfg = GPT2Config(vocab_size=600, n_positions=128, n_embd=128, n_layer=2, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, activation_function="gelu_pytorch_tanh")
cfg._attn_implementation="sdpa"
m = GPT2LMHeadModel(cfg); opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randint(0, 600, (32, 64))
def step(ac):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
        loss = m(input_ids=x, labels=x).loss
    loss.backward(); opt.step(); opt.zero_grad()
for rep in range(3):
    for ac in (False, True):
        for _ in range(3): step(ac)
        t=time.perf_counter()
        for _ in range(20): step(ac)
        print(ac, (time.perf_counter()-t)/20*1000, "ms")
