r"""A Llama pair on the paper's tasks: Llama-3.1-8B-Instruct teacher -> Llama-3.2-1B-Instruct.

    python -m cmdp.plan --config configs/llama_math.py --topology v5p-64
    launch/tpu_pod.sh --accelerator-type=v5p-64 TPU_NAME ZONE \
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
has 8.03B parameters, the student 1.24B (tied embeddings).

Sized for `SLICE` (v5p-64: 32 chips of 95 GiB): mesh data=8 x tensor=4, 256 sequences per
step (32 prompts x 8 samples), prompts 512 + 512 new tokens, 4 microbatches. The planner
(`python -m cmdp.plan --config configs/llama_math.py --topology v5p-64`, no weights needed:
the hub ids fall back to the architecture presets; 213 s of compiling on 2 idle CPU
cores) gives per device: student params 1.15 GiB, optimiser 2.30 GiB, teacher params 7.48
GiB, KV cache 0.25 GiB; peak 20.9 GiB in the train step, which runs the teacher on each
64-sequence microbatch (rollout 13.1 GiB): fits. XLA's estimate (its `optimal_seconds`, an
ideal lower bound) is 2.7 s per step: rollout 0.93 s, update 1.8 s of which the teacher's
forward 1.0 s; 2.1e14 FLOPs per device per step; 200 steps.
"""
from cmdp.data import DEFAULT_MATH_SYSTEM_PROMPT
from cmdp.training.config import base_config, parse_arg, set_objective, shrink_for_cpu

SLICE = "v5p-64"  # the Cloud TPU slice this config is sized for (32 chips, 95 GiB each)


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

  c.loss.group_size = 8  # samples per prompt
  c.calibrate_budget_quantile = 0.5  # budget = median sequence cost of the initial student
  c.calibration_prompts = 64
  if c.objective in ("cmdp", "worst_case"):  # the Sauté penalty's scale (only they read it)
    c.loss.penalty_scale = 0.1  # a violating token costs 0.1 x its cost
  c.batch_size = 256  # 32 prompts x 8 samples per step
  c.grad_accum_steps = 4  # 64 sequences per microbatch
  c.num_steps = 200
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 10
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 0.01

  # 32 chips: 8-way data parallel x 4-way tensor parallel (32 query / 8 kv heads split 4
  # ways); rows are split over "data", so activations stay batch-sharded.
  c.mesh.data = 8
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
    shrink_for_cpu(c)
  return c
