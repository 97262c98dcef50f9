"""Scratch measurement behind a line of the issue-12 note: a toy GPT-2 (2 layers, width 64, batch
8 x 45) forward + log-prob loss + backward + AdamW, eager against torch.compile (inductor, CPU);
prints the compile time and ms/step over three alternating repeats. Not part of PERFORMANCE.md
(run on a loaded machine: read the ratio only)."""
import time, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.set_num_threads(1)
cfg = GPT2Config(vocab_size=600, n_positions=128, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, activation_function="gelu_pytorch_tanh")
cfg._attn_implementation="sdpa"
m = GPT2LMHeadModel(cfg); opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randint(0, 600, (8, 45))
def loss_fn(x):
    out = m(input_ids=x, use_cache=False)
    lp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None]).squeeze(-1)
    return -lp.mean()
cl = torch.compile(loss_fn)
def step(f):
    loss = f(x); loss.backward(); opt.step(); opt.zero_grad()
t=time.perf_counter(); step(cl); print("compile", time.perf_counter()-t)
for rep in range(3):
    for name, f in (("eager", loss_fn), ("compiled", cl)):
        for _ in range(3): step(f)
        t=time.perf_counter()
        for _ in range(30): step(f)
        print(name, (time.perf_counter()-t)/30*1000, "ms")
