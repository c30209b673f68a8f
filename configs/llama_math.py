r"""A Llama pair on the paper's tasks: Llama-3.1-8B-Instruct teacher -> Llama-3.2-1B-Instruct.

    python -m cmdp.plan --config configs/llama_math.py --topology v5e-8
    launch/tpu_pod.sh --accelerator-type=v5litepod-8 TPU_NAME ZONE \
        configs/llama_math.py:task=gsm8k gs://bucket/runs/llama_cmdp

Arguments (`configs/llama_math.py:objective=...,task=...,teacher=...,student=...`):
  objective  any registered objective (default cmdp).
  task       gsm8k (`gsm8k_dir`) or math (`math_dir`), as in configs/qwen_math.py.
  teacher, student
             Hugging Face model directories or hub ids (read from the local Hugging Face
             cache only), or `preset:llama-3.1-8b` / `preset:llama-3.2-1b` (random weights
             with the published architecture: for sizing and smoke tests).
  small      swaps both models for tiny random ones (a CPU smoke test of the plumbing).

Both models use the Llama-3 tokenizer (128,256 rows) and llama3 RoPE scaling; the teacher
has 8.03B parameters, the student 1.24B (tied embeddings). Compute is bfloat16; the frozen
teacher is stored in bfloat16, the student's master weights and Adam state in float32.

Sized for `SLICE` (v5e-8, one host: 8 chips of 16 GiB): 8-way FSDP (mesh data=1 x fsdp=8),
256 sequences per step (32 prompts x 8 samples), prompts 512 + 512 new tokens, 4
microbatches of 64 sequences (one prompt group per chip, whose prompt runs once). The
planner (no weights needed):

    python -m cmdp.plan --config configs/llama_math.py --topology v5e-8

gives (docs/plans/llama_math_v5e-8.txt and .json; docs/performance.md); 200 steps:

  plan-quote: docs/plans/llama_math_v5e-8.json
  `configs/llama_math.py` on v5e-8 (8 chips, fsdp=8, 256 sequences a step): peak 12.71 GiB
  of 16 GiB per chip (train step); planned step 6.1 s by the roofline (rollout prefill 46
  ms (memory-bound); rollout decode 2.6 s (memory-bound); train step 3.5 s
  (memory-bound)). The teacher's forward is 2.84e+14 of the step's 4.49e+14 FLOPs per chip
  (63%). The decode loop takes 511 steps of 5.1 ms, 1.26 x its bandwidth floor of 2.0 s
  (the decode weights every step and the attended cache). 6,230 generated tokens/s per
  chip over the rollout, 2,677 over the whole step.
  /plan-quote

Larger slices: fsdp over every chip, e.g. `--topology v5e-32 --config.mesh.fsdp=32`.
"""
from cmdp.data import DEFAULT_MATH_SYSTEM_PROMPT
from cmdp.training.config import base_config, parse_arg, set_objective, shrink_for_cpu

SLICE = "v5e-8"  # the Cloud TPU slice this config is sized for (one host: 8 chips of 16 GiB)


def get_config(arg=None):
  arg = parse_arg(arg, objective="cmdp", task="gsm8k", gsm8k_dir="openai/gsm8k",
                  math_dir="HuggingFaceH4/MATH-500",
                  teacher="meta-llama/Llama-3.1-8B-Instruct",
                  student="meta-llama/Llama-3.2-1B-Instruct", small=False)
  c = base_config()
  set_objective(c, arg.objective)  # applies the objective's preset (worst_case's constraint)
  c.teacher.path = arg.teacher
  c.student.path = arg.student
  c.teacher.dtype = c.student.dtype = "bfloat16"
  c.student.remat = True  # rematerialise each block: activation memory of long rollouts

  if arg.task == "math":
    c.data.train = c.data.test = f"math:{arg.math_dir}"
    c.data.system_prompt = DEFAULT_MATH_SYSTEM_PROMPT  # final answer in \boxed{}
  else:
    c.data.train = c.data.test = f"gsm8k:{arg.gsm8k_dir}"
  c.data.test_size = 1_319  # the GSM8K test split
  c.data.max_prompt_len = 512  # tokens, left padded
  c.data.sft_max_len = 1_024
  c.rollout.max_new_tokens = 512  # response cap
  c.rollout.teacher_logits_dtype = "bfloat16"  # halves the [B, L, 128k] teacher logits

  c.rollout.group_size = 8  # samples per prompt
  c.calibrate_budget_quantile = 0.5  # budget = median sequence cost of the initial student
  c.calibration_prompts = 64
  # cmdp's penalty: the default, Sauté's terminal one (-1 once when the budget runs out).
  c.batch_size = 256  # 32 prompts x 8 samples per step
  c.grad_accum_steps = 4  # 64 sequences per microbatch: one group of 8 rows per chip
  c.num_steps = 200
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 10
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 0.01

  # One v5e-8 host: 8-way FSDP (rows, the teacher, the student and its Adam state all split
  # over the 8 chips). Larger slices: see the docstring.
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
    shrink_for_cpu(c)
  return c
