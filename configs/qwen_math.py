r"""The paper's accelerator setting: Qwen2.5-Math-7B teacher -> Qwen2.5-Math-1.5B student.

    python -m cmdp.train --config configs/qwen_math.py:objective=cmdp,task=gsm8k \
        --workdir gs://bucket/runs/qwen_cmdp
    python -m cmdp.plan --config configs/qwen_math.py --topology v5p-128
    launch/tpu_pod.sh --accelerator-type=v5p-128 TPU_NAME ZONE configs/qwen_math.py:task=math \
        gs://bucket/runs/math

Arguments (`configs/qwen_math.py:objective=...,task=...,teacher=...,student=...`):
  objective  any registered objective (default cmdp).
  task       gsm8k (`gsm8k_dir`: local directory or the hub id openai/gsm8k) or math
             (`math_dir`: the Hendrycks MATH release, a MATH-500 jsonl, or a hub id).
  teacher, student
             Hugging Face model directories or hub ids; hub ids are read from the local
             Hugging Face cache only (`huggingface-cli download Qwen/Qwen2.5-Math-7B` first);
             or `preset:qwen2.5-math-7b` / `preset:qwen2.5-math-1.5b` (the architecture
             with random weights, see cmdp/models/presets.py).
  small      swaps both models for tiny random ones and shrinks everything (a CPU smoke
             test of this config's plumbing).

The two models pad their embedding tables differently (152,064 vs 151,936 rows, one
tokenizer); the trainer compares logits over the shared rows. Compute is bfloat16,
parameters and optimiser state float32; teacher and student share one mesh.

Sized for `SLICE` (v5p-128: 64 chips of 95 GiB): mesh data=16 x tensor=4, 512 sequences
per step (64 prompts x 8 samples), prompts 512 + 512 new tokens, 8 microbatches. The planner
(`python -m cmdp.plan --config configs/qwen_math.py --topology v5p-128`, no weights needed:
the hub ids fall back to the architecture presets; 35 minutes of compiling on 2 busy CPU
cores) gives per device: student params 1.50 GiB, optimiser 3.00 GiB, teacher params 7.09
GiB, KV cache 0.87 GiB; peak 21.3 GiB in the train step, which runs the teacher on each
64-sequence microbatch (rollout 13.2 GiB): fits. XLA's estimate (its `optimal_seconds`, an
ideal lower bound) is 7.3 s per step: rollout 3.3 s, update 4.1 s of which the teacher's
forward 1.4 s; 2.4e14 FLOPs per device per step; 200 steps. A v5e-32 (16 GiB chips, with
`--config.mesh.data=-1`: data=8 x tensor=4) does not fit: peak 21.9 GiB in the train step,
and neither more microbatches (16 to 64: 21.0 to 20.0 GiB) nor an fsdp=32 mesh (18.9 GiB,
rollout) brought it under 16 GiB (those two searched with the previous release's step).
"""
from cmdp.data import DEFAULT_MATH_SYSTEM_PROMPT
from cmdp.training.config import base_config, parse_arg, set_objective, shrink_for_cpu

SLICE = "v5p-128"  # the Cloud TPU slice this config is sized for (64 chips, 95 GiB each)


def get_config(arg=None):
  arg = parse_arg(arg, objective="cmdp", task="gsm8k", gsm8k_dir="openai/gsm8k",
                  math_dir="HuggingFaceH4/MATH-500", teacher="Qwen/Qwen2.5-Math-7B",
                  student="Qwen/Qwen2.5-Math-1.5B", small=False)
  c = base_config()
  set_objective(c, arg.objective)  # applies the objective's preset (worst_case's constraint)
  c.teacher.path = arg.teacher
  c.student.path = arg.student
  c.teacher.dtype = c.student.dtype = "bfloat16"
  c.student.remat = True  # activation memory of 512 x 1.5B at 64 rows per step

  if arg.task == "math":
    c.data.train = c.data.test = f"math:{arg.math_dir}"
    c.data.system_prompt = DEFAULT_MATH_SYSTEM_PROMPT  # final answer in \boxed{}
  else:
    c.data.train = c.data.test = f"gsm8k:{arg.gsm8k_dir}"
  c.data.test_size = 1_319
  c.data.max_prompt_len = 512
  c.data.sft_max_len = 1_024
  c.rollout.max_new_tokens = 512
  c.rollout.teacher_logits_dtype = "bfloat16"  # halves the [B, L, 152k] teacher logits

  c.loss.group_size = 8
  c.calibrate_budget_quantile = 0.5  # budget = median sequence cost of the initial student
  c.calibration_prompts = 64
  if c.objective in ("cmdp", "worst_case"):  # the Sauté penalty's scale (only they read it)
    c.loss.penalty_scale = 0.1  # a violating token costs 0.1 x its cost
  c.batch_size = 512  # 64 prompts x 8 samples
  c.grad_accum_steps = 8
  c.num_steps = 200
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 10
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 0.01

  # 64 chips: 16-way data parallel x 4-way tensor parallel (28 / 12 query heads split 4
  # ways). Rows are split over "data", so activations stay batch-sharded; an fsdp-only mesh
  # makes XLA keep whole-batch activations per device (see the planner's report).
  c.mesh.data = 16
  c.mesh.fsdp = 1
  c.mesh.tensor = 4
  c.checkpoint_every = 20
  c.eval_every = 50
  c.eval.batch_size = 256
  c.eval.max_new_tokens = 512
  c.eval.pass_k = 4
  c.eval.include_teacher = True
  c.eval.include_initial_student = True

  if arg.small:  # CPU smoke test (tests/training/test_evaluate.py, tests/test_plan.py)
    shrink_for_cpu(c, mesh=(1, -1, 1), attention_bias=True)
  return c
