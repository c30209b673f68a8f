r"""The arithmetic comparison on the SmolLM2 study's protocol: equal knob grids in budget
units, two budgets, the same rules, 5 paired seeds.

    python -m cmdp.study --config configs/study_arith.py --workdir /tmp/study_arith
    python -m cmdp.study --config configs/study_arith.py:small --workdir /tmp/study_small

The setting (runs on 2 CPU cores): a character-level teacher (4 layers, 220k parameters) and
a student with under half its parameters (2 layers, 101k), both trained from scratch by
supervised learning on worked solutions (`cmdp.study.pretrain`, cached). Both curricula
write most "Doubles / Triples them." steps as additions of the factor (`mul_as_add`, a
learnt habit of choosing `+` where `*` is right): the teacher 95% of them, the student half.
So the teacher is strong on problems without a multiplication and wrong on the 15% with
one; on those a right answer needs `*`, which the teacher all but never writes, so the
reward and the teacher pull apart.

The protocol (`PROTOCOL`, `cmdp.study.protocol`) is the one of configs/study_smollm2.py,
declared before this study ran on it. The run settings (rollout temperature 0.7, learning
rate 2.5e-5, batches of 8 prompts x 8) come from the probes of
docs/results/arith_tension.md (section E); 40 steps (not 50) and 500 evaluation problems
with 2 samples each keep the 100 runs under 90 minutes by the earlier study's measured
cost (a run took 55 s at 50 steps and 1,000 problems with 1 sample).

The earlier report of this setting (15 methods with nats-scaled penalties and lambdas, one
budget, 30 Nov 2026) is kept as a dated record in docs/results/arith_2026-11-30.md; this
study writes docs/results/arith.md.

Argument: `small` (tiny models, 1 seed, 2 methods, 2 steps, 48 evaluation problems: the
CI smoke test).
"""
import ml_collections

from cmdp.study import protocol
from cmdp.training.config import base_config, config_module, model_fields, parse_arg

GRID = (0.3, 3.0)  # n, and lambda d, in task-reward units per budget: every family
QUANTILES = (0.5, 0.9)  # the budgets: these quantiles of the initial student's sampled C(y)
# The dated notes on this study's runs, printed in its report (`settings_note`): those of
# configs/study_smollm2.py, whose protocol this study runs.
SMOLLM2 = config_module(__file__, "study_smollm2.py")
PROTOCOL = """\
* **Cost and units.** `C(y)` = the sum over response tokens of the exact KL(student || teacher)
  (characters), in nats per sequence, on the deployed student, at the states of samples at
  the training temperature 0.7.
* **Reading.** `P(C(y) <= d) >= 1 - delta`: satisfaction is the share of sampled responses
  (2 per problem, 500 held-out problems) within `d`.
* **Budgets.** `d` at the 0.5 and 0.9 quantiles of the initial student's `C(y)` on 512 sampled
  training responses, calibrated once.
* **Knobs, the same grid {0.3, 3} in budget units for every constrained family:** `cmdp`
  (terminal penalty, the default), `cmdp_scaled`, `cmdp_hinge`, `soft_lagrangian` (`lambda d`),
  and `dual_lagrangian` with the rate target `1 - q`. Anchors: `grpo`, `gkd`.
* **Runs.** 40 steps of 8 prompts x 8 samples, learning rate 2.5e-5, temperature 0.7, 72 new
  characters at most; 5 paired seeds; evaluation at the end, greedy and 2 samples per problem.
* **Rules.** As configs/study_smollm2.py: *holds* (final sampled satisfaction >= initial - 2
  points, every seed), *informative* (grpo loses >= 5 points), *beats* (a cmdp family's best
  holding setting more accurate than the best holding Lagrangian setting in every seed, or
  holding where none does)."""


def get_config(arg=None):
  arg = parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.name = "arith"  # report files: <output_dir>/<name>.md / .png / .json
  c.title = "Evidence study: constrained distillation on generated arithmetic"
  c.description = (
      "Multi-step arithmetic word problems in the GSM8K format (2-3 operations, worked "
      "steps `a+b=<<a+b=c>>c`, final `#### n`). A character-level teacher and a student "
      "with under half its parameters are trained from scratch on curricula that write "
      "most multiplication steps as additions of the factor: the teacher 95% of them, the "
      "student half. On the problems with a multiplication a right answer needs `*`, which "
      "the teacher all but never writes: there the reward pulls the student away from the "
      "teacher, beyond the KL budget.")
  c.protocol = PROTOCOL
  c.settings_note = (
      "The shared settings were chosen once, before the study, from one-seed probes of "
      "grpo, gkd, cmdp and soft_lagrangian@0.1 on 500 test problems "
      "(docs/results/arith_tension.md, section E), and every method uses them unchanged: "
      "rollout temperature 0.7 (at 1.0 a weaker student's samples were mostly wrong: 25% "
      "sampled against 51% greedy); learning rate 2.5e-5 with batches of 8 prompts x 8 "
      "samples (at 5e-5 for 60 steps grpo lost 10 points on the problems without a "
      "multiplication, at 2e-5 under 1); 40 steps, set by the study's 90-minute limit. The "
      "budgets follow the protocol (the 0.5 and 0.9 quantiles). "
      + SMOLLM2.rerun_note("5c78892", "arith") + " " + SMOLLM2.SIGNAL_NOTE)
  # Where the report goes: "" = <workdir>/results; the committed report was written with
  # `--output_dir docs/results` (python -m cmdp.study --help).
  c.output_dir = ""
  c.seeds = 5  # seeds 0..seeds-1, each shared by every method (paired)
  c.compilation_cache = True  # JAX's persistent cache in <workdir>/jax_cache (seeds > 0 reuse)
  c.keep_run_checkpoints = False  # True keeps each finished run's checkpoint (the trained student)

  # The task everything trains on and is evaluated on (cmdp.data.arith.load_arith kwargs).
  c.task = ml_collections.ConfigDict(dict(
      min_ops=2, max_ops=3, min_start=2, max_start=15, max_operand=9, max_value=30,
      # add, subtract, multiply: 15% of the problems have a multiplication, the sub-type
      # on which the teacher's habit is wrong
      op_weights=(0.47, 0.47, 0.06)))

  # The supervised stage (cached in <workdir>/pretrain/<role>).
  teacher_model = model_fields(hidden_size=64, intermediate_size=192, num_layers=4,
                               num_heads=4, num_kv_heads=4, head_dim=16,
                               max_position_embeddings=256)
  student_model = model_fields(hidden_size=64, intermediate_size=160, num_layers=2,
                               num_heads=4, num_kv_heads=4, head_dim=16,
                               max_position_embeddings=256)
  c.pretrain = ml_collections.ConfigDict()
  for role, model, steps, overrides in (
      # Both curricula are rich in multiplication steps and write most of them as
      # additions: the teacher 95% of them (a strong wrong habit), the student half.
      ("teacher", teacher_model, 1_000, dict(mul_as_add=0.95, op_weights=(0.35, 0.35, 0.3))),
      ("student", student_model, 1_000, dict(mul_as_add=0.5, op_weights=(0.35, 0.35, 0.3)))):
    c.pretrain[role] = ml_collections.ConfigDict(dict(
        model=model,  # architecture (random init)
        steps=steps,  # optimiser steps of cross-entropy on worked solutions
        batch_size=32,  # sequences per step
        train_size=20_000,  # distinct training problems
        task_overrides=overrides,  # task kwargs changed for this model's curriculum
        optimizer=dict(learning_rate=3e-3, warmup_steps=50, schedule="cosine"),
        checkpoint_every=250,  # an interrupted stage resumes from here
        seed=0,  # random init and data order
    ))

  c.budget_quantiles = QUANTILES
  c.calibration = ml_collections.ConfigDict(dict(seed=0))
  c.rules = ml_collections.ConfigDict(dict(hold_margin=0.02, stress_points=0.05))

  # Shared by every run (equal budgets): batch, rollouts, new tokens, optimiser, steps.
  r = base_config()
  r.tokenizer = "char"
  r.data.train = "arith"
  r.data.test = "arith"
  r.data.train_size = 5_000  # RL prompts
  r.data.test_size = 8  # the trainer's own split (unused: the study evaluates)
  r.data.system_prompt = "."  # short: every character is a token
  r.rollout.sft_source = "teacher"  # sft: sequence-level distillation on teacher samples
  r.data.max_prompt_len = 128
  r.data.sft_max_len = 176
  r.rollout.group_size = 8  # samples per prompt (the reward is sparse: 8 give most groups a 1)
  r.rollout.max_new_tokens = 72
  r.rollout.temperature = 0.7
  r.batch_size = 64  # 8 prompts x 8 samples
  # Dynamic sampling: a step trains on 8 groups with contrast, from generation batches of 8
  # prompts, at most 4 a step (docs/method.md).
  r.dynamic_sampling.enabled = True
  r.dynamic_sampling.max_generation_batches = 4
  r.num_steps = 40
  r.calibration_prompts = 64  # x 8 = 512 samples
  r.calibration_batch_size = 0
  r.optimizer.learning_rate = 2.5e-5
  r.checkpoint_every = 0  # final checkpoint only: runs are short
  r.keep_checkpoints = 1
  r.log_every = 10
  r.progress_bar = False
  c.run = r

  c.methods = protocol.methods(GRID, QUANTILES)
  c.eval = ml_collections.ConfigDict(dict(
      num_examples=500,  # held-out problems (the test split)
      data_seed=0,  # generator seed of the test split
      batch_size=250,  # prompts per generation batch
      max_new_tokens=72,  # response cap
      # samples per problem at the rollout temperature (sampled accuracy, satisfaction, KL;
      # the same keys for every run), next to the greedy decode
      pass_k=2,
  ))
  if arg.small:
    _small(c)
  return c


def _small(c):
  """Tiny models, 1 seed, 2 methods, a few steps: the end-to-end test (2 CPU cores)."""
  c.title += " (small smoke run)"
  c.output_dir = ""
  c.seeds = 1
  c.run.dynamic_sampling.max_generation_batches = 2  # still resamples, at half the rollouts
  c.task.max_ops = 3
  for role, width in (("teacher", 32), ("student", 16)):
    p = c.pretrain[role]
    p.model = model_fields(hidden_size=width, intermediate_size=2 * width, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=width // 2,
                           max_position_embeddings=256)
    p.steps = 4
    p.batch_size = 8
    p.train_size = 200
    p.optimizer.warmup_steps = 0
    p.checkpoint_every = 0
  c.run.calibration_prompts = 4
  c.run.mesh.num_devices = 1  # one device even where tests simulate 8
  c.run.data.train_size = 64
  c.run.rollout.max_new_tokens = 24
  c.run.rollout.group_size = 4
  c.run.batch_size = 8
  c.run.num_steps = 2
  c.run.log_every = 1
  keep = ("cmdp@3/q50", "grpo")
  c.methods = [m for m in c.methods if m["name"] in keep]
  c.eval.num_examples = 48
  c.eval.batch_size = 24
  c.eval.max_new_tokens = 24
