r"""The paper's accelerator setting: Qwen2.5-Math-7B teacher -> Qwen2.5-Math-1.5B student.

    python -m cmdp.train --config configs/qwen_math.py:objective=cmdp,task=gsm8k \
        --workdir gs://bucket/runs/qwen_cmdp
    launch/tpu_pod.sh TPU_NAME ZONE configs/qwen_math.py:task=math gs://bucket/runs/math

Arguments (`configs/qwen_math.py:objective=...,task=...,teacher=...,student=...`):
  objective  any registered objective (default cmdp).
  task       gsm8k (`gsm8k_dir`: local directory or the hub id openai/gsm8k) or math
             (`math_dir`: the Hendrycks MATH release, a MATH-500 jsonl, or a hub id).
  teacher, student
             Hugging Face model directories or hub ids; hub ids are read from the local
             Hugging Face cache only (`huggingface-cli download Qwen/Qwen2.5-Math-7B` first).
  small      swaps both models for tiny random ones and shrinks everything (a CPU smoke
             test of this config's plumbing).

The two models pad their embedding tables differently (152,064 vs 151,936 rows, one
tokenizer); the trainer compares logits over the shared rows. Meshes: the student is
fully sharded (fsdp) across the slice and the teacher is tensor-parallel on the same
devices; compute is bfloat16, parameters and optimiser state float32.

Cost: on a v4-64 / v5p-64 slice (or 8 x H100) one step of 64 prompts x 8 samples x 512
new tokens is dominated by generation; expect about a minute per step and ~200 steps.
"""
from cmdp.data import DEFAULT_MATH_SYSTEM_PROMPT
from cmdp.training.config import base_config, model_fields, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, objective="cmdp", task="gsm8k", gsm8k_dir="openai/gsm8k",
                  math_dir="HuggingFaceH4/MATH-500", teacher="Qwen/Qwen2.5-Math-7B",
                  student="Qwen/Qwen2.5-Math-1.5B", small=False)
  c = base_config()
  c.objective = arg.objective
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
  c.loss.penalty_scale = 0.1
  c.batch_size = 512  # 64 prompts x 8 samples
  c.grad_accum_steps = 8
  c.num_steps = 200
  c.optimizer.learning_rate = 1e-6
  c.optimizer.warmup_steps = 10
  c.optimizer.schedule = "cosine"
  c.optimizer.weight_decay = 0.01

  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.checkpoint_every = 20
  c.eval_every = 50
  c.eval.batch_size = 256
  c.eval.max_new_tokens = 512
  c.eval.pass_k = 4
  c.eval.include_teacher = True
  c.eval.include_initial_student = True

  if arg.small:
    c.tokenizer = "char"
    c.teacher.path = c.student.path = ""
    c.teacher.dtype = c.student.dtype = "float32"
    c.teacher.random_init = model_fields(num_layers=2, attention_bias=True)
    c.student.random_init = model_fields(num_layers=1, attention_bias=True)
    c.data.train = c.data.test = "reasoning_gym:basic_arithmetic"
    c.data.train_size, c.data.test_size = 16, 4
    c.data.max_prompt_len = 160
    c.rollout.max_new_tokens = c.eval.max_new_tokens = 8
    c.loss.group_size, c.batch_size, c.grad_accum_steps = 2, 8, 2
    c.calibration_prompts = 2
    c.num_steps, c.eval_every, c.eval.batch_size, c.eval.pass_k = 2, 0, 8, 2
    c.eval.include_teacher = c.eval.include_initial_student = False
    c.mesh.fsdp = -1
  return c
