r"""Tiny teacher and student, randomly initialised, on easy arithmetic: tests and iteration.

    python -m cmdp.train --config configs/tiny.py --workdir /tmp/cmdp_tiny
    python -m cmdp.train --config configs/tiny.py:objective=dual_lagrangian --workdir DIR

Argument: `objective=<name>` (any registered objective, default `cmdp`), `steps=<n>`.
Cost: about a minute on 2 CPU cores (compile included); nothing is downloaded. The models
are random, so accuracy stays near 0: this config exercises the machinery, not learning.
"""
from cmdp.training.config import base_config, model_fields, parse_arg, set_objective


def get_config(arg=None):
  arg = parse_arg(arg, objective="cmdp", steps=4)
  c = base_config()
  set_objective(c, arg.objective)  # applies the objective's preset (worst_case's constraint)
  c.tokenizer = "char"  # built-in character tokenizer: no files needed
  c.teacher.random_init = model_fields(hidden_size=64, intermediate_size=128, num_layers=2,
                                       num_heads=4, num_kv_heads=2, head_dim=16)
  c.student.random_init = model_fields(hidden_size=32, intermediate_size=64, num_layers=1,
                                       num_heads=2, num_kv_heads=1, head_dim=16)

  c.data.train = "reasoning_gym:basic_arithmetic"
  c.data.test = "reasoning_gym:basic_arithmetic"
  c.data.train_size = 64
  c.data.test_size = 8
  c.data.task_kwargs = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1,
                            operators=("+", "-"))
  c.data.system_prompt = "End with '#### <n>'."
  c.data.max_prompt_len = 96  # characters: the chat-templated question fits
  c.data.sft_max_len = 128

  c.rollout.group_size = 2
  # Random models sit near these, so some responses violate and the constraint is live:
  # reverse KL summed over the response (about 0.02 nats/token x 12 tokens), or, for
  # worst_case, the teacher's NLL per token (about log 104 = 4.64 nats: near uniform).
  c.loss.budget = 4.65 if c.loss.cost == "teacher_nll" else 0.25
  c.rollout.max_new_tokens = 12
  c.batch_size = 8
  c.num_steps = arg.steps
  c.optimizer.learning_rate = 1e-3
  c.checkpoint_every = 2
  c.progress_bar = False
  c.eval.batch_size = 8
  c.eval.max_new_tokens = 12
  return c
