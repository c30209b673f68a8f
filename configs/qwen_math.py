r"""The paper's accelerator setting: Qwen2.5-Math-7B teacher -> Qwen2.5-Math-1.5B student.

    python -m cmdp.train --config configs/qwen_math.py:objective=cmdp,task=gsm8k \
        --workdir gs://bucket/runs/qwen_cmdp
    python -m cmdp.plan --config configs/qwen_math.py --topology v5e-8
    launch/tpu_pod.sh --accelerator-type=v5litepod-8 TPU_NAME ZONE \
        configs/qwen_math.py:task=math gs://bucket/runs/math

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
tokenizer); the trainer compares logits over the shared rows. Compute is bfloat16; the
frozen teacher is stored in bfloat16 (`teacher.param_dtype` "": its compute dtype), the
student's master weights and Adam state in float32; teacher and student share one mesh.

Sized for `SLICE` (v5e-8, one host: 8 chips of 16 GiB): 8-way FSDP (mesh data=1 x fsdp=8:
rows, weights, Adam state and gradients all split over the chips), 512 sequences per step
(64 prompts x 8 samples), prompts 512 + 512 new tokens, 8 microbatches of 64 sequences: one
prompt group per chip, so each chip runs its group's prompt once in every forward pass.
The planner (no weights needed: the hub ids fall back to the architecture presets):

    python -m cmdp.plan --config configs/qwen_math.py --topology v5e-8

gives (docs/plans/qwen_math_v5e-8.txt and .json; docs/performance.md):

  plan-quote: docs/plans/qwen_math_v5e-8.json
  `configs/qwen_math.py` on v5e-8 (8 chips, fsdp=8, 512 sequences a step): peak 14.14 GiB
  of 16 GiB per chip (train step); planned step 12.6 s by the roofline (rollout prefill
  103 ms (memory-bound); rollout decode 3.6 s (memory-bound); train step 8.9 s
  (memory-bound)). The teacher's forward is 5.32e+14 of the step's 9.81e+14 FLOPs per chip
  (54%). The decode loop takes 511 steps of 7.0 ms, 1.28 x its bandwidth floor of 2.8 s
  (the decode weights every step and the attended cache). 8,879 generated tokens/s per
  chip over the rollout, 2,603 over the whole step.
  /plan-quote

200 steps. Larger slices, fsdp over every chip and microbatches that keep a whole group
per chip:

    --topology v5e-32   --config.mesh.fsdp=32 --config.grad_accum_steps=2
    --topology v5p-128  --config.mesh.fsdp=64 --config.grad_accum_steps=1

v5e-32 (docs/plans/qwen_math_v5e-32.json):

  plan-quote: docs/plans/qwen_math_v5e-32.json short
  Planned for `configs/qwen_math.py` on v5e-32: 4.1 s a step, 3,432 generated tokens/s per
  chip over the rollout; the decode loop at 1.09 x its floor; peak 9.56 of 16 GiB.
  /plan-quote

v5p-128 (docs/plans/qwen_math_v5p-128.json; 64 chips of 95 GiB, one microbatch of 512):

  plan-quote: docs/plans/qwen_math_v5p-128.json short
  Planned for `configs/qwen_math.py` on v5p-128: 904 ms a step, 6,378 generated tokens/s
  per chip over the rollout; the decode loop at 1.05 x its floor; peak 9.58 of 95 GiB.
  /plan-quote

Planning the v5e-8 takes about 5 minutes on 2 idle cores (261 s).

(`python -m cmdp.plan ... --smallest` finds the smallest slice of a chip that fits.)
"""
from cmdp.data import DEFAULT_MATH_SYSTEM_PROMPT
from cmdp.training.config import base_config, parse_arg, set_objective, shrink_for_cpu

SLICE = "v5e-8"  # the Cloud TPU slice this config is sized for (one host: 8 chips of 16 GiB)


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

  c.rollout.group_size = 8
  c.calibrate_budget_quantile = 0.5  # budget = median sequence cost of the initial student
  c.calibration_prompts = 64
  # cmdp's penalty: the default, Sauté's terminal one (-1 once when the budget runs out).
  c.batch_size = 512  # 64 prompts x 8 samples
  c.grad_accum_steps = 8  # 64 sequences per microbatch: one group of 8 rows per chip
  c.num_steps = 200
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 10
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 0.01

  # One v5e-8 host: 8-way FSDP. Rows are split over all 8 chips, and so are the teacher,
  # the student and its Adam state (each layer's weights gathered where used, gradients
  # reduce-scattered). Larger slices: see the docstring.
  c.mesh.data = 1
  c.mesh.fsdp = 8
  c.mesh.tensor = 1
  c.checkpoint_every = 20
  c.eval_every = 50
  c.eval.batch_size = 256
  c.eval.max_new_tokens = 512
  c.eval.pass_k = 4
  c.eval.include_teacher = True
  c.eval.include_initial_student = True

  if arg.small:  # CPU smoke test (tests/training/test_evaluate.py, tests/plan/)
    shrink_for_cpu(c, mesh=(1, -1, 1), attention_bias=True)
  return c
