r"""Evidence study on generated GSM8K-format arithmetic: every objective, >= 5 seeds, CIs.

    python -m cmdp.study --config configs/study_arith.py --workdir /tmp/study_arith
    python -m cmdp.study --config configs/study_arith.py:small --workdir /tmp/study_small

The setting (runs on 2 CPU cores): a character-level teacher (4 layers, 220k parameters) and
a student with under half its parameters (2 layers, 101k), both trained from scratch by
supervised learning on worked solutions (`cmdp.study.pretrain`, cached). Both curricula
write most "Doubles / Triples them." steps as additions of the factor (`mul_as_add`, a
learnt habit of choosing `+` where `*` is right): the teacher 95% of them, the student half.
So the teacher is strong on problems without a multiplication (97% greedy) and wrong on the
15% with one (4%: only where adding the factor happens to give the product), 83% in all;
the student is weaker at arithmetic (83% without a multiplication) and writes `*` about as
often as `+`, 77% in all. On the problems with a multiplication the reward and the teacher
pull apart: a right answer needs `*`, which the teacher all but never writes, so a correct
response there costs about 7-9 nats of KL(student || teacher) against a budget d of about
4.4 (the 0.9 quantile of the initial student's sampled sequence KL). Unconstrained `grpo`
can gain reward by leaving the budget; `gkd` moves the student towards the teacher's habit.

soft_lagrangian penalises lambda * C(y), C the per-sequence KL in nats: lambda * d, the
penalty of a response exactly at the budget, is 0.04, 0.13, 0.44 and 1.3 reward units for
lambda = 0.01, 0.03, 0.1, 0.3; for a correct response with a multiplication (about 8 nats)
only lambda = 0.3 outweighs the reward of 1.

The run settings (rollout temperature 0.7, learning rate 2.5e-5, 50 steps of 8 prompts x 8)
come from the probes of docs/results/arith_tension.md (section E, one seed each): at 5e-5
for 60 steps grpo gained on problems with a multiplication (+18 points greedy) but lost 10
on the others; at 2e-5 it gained 15 points there and lost under 1 on the rest.

Results: docs/results/arith.md (every method, 5 seeds, 95% intervals, paired comparisons).

Argument: `small` (tiny models, 2 seeds, 4 methods, a few steps, 48 evaluation problems:
the CI smoke test, about 60 s). Cost of the full study on 2 CPU cores: pretraining 9 min
(teacher 6.0 min, student 3.1 min); each run about 1 min (50 steps of 64 sequences at about
0.7 s, the evaluation on 1,000 problems); 15 methods x 5 seeds = 75 runs. Measured: 79 min
from scratch (supervised stage 9.1 min, calibration and first evaluation 1.0 min, 75 runs
69.1 min), 2.1 GB peak.
"""
import ml_collections

from cmdp.training.config import base_config, model_fields, parse_arg


def methods(soft_lambdas=(0.01, 0.03, 0.1, 0.3), budget_scales=(0.5, 2.0),
            penalty_scales=(0.1,)):
  """Every method: name, registered objective, loss overrides, budget factor on d."""
  out = [dict(name="cmdp", objective="cmdp", loss={}, budget_scale=1.0)]
  out += [dict(name=f"cmdp@{s:g}d", objective="cmdp", loss={}, budget_scale=s)
          for s in budget_scales]
  # cmdp at other penalty scales n (the default is n = 1), one method each. n = 0.1 (the
  # main job's, configs/smollm2_sums.py) was added after the first 70 runs, in which cmdp
  # at n = 1 lost accuracy.
  out += [dict(name=f"cmdp_penalty{n:g}", objective="cmdp", loss=dict(penalty_scale=n),
               budget_scale=1.0) for n in penalty_scales]
  out += [dict(name=f"soft_lagrangian@{lam:g}", objective="soft_lagrangian",
               loss=dict(soft_lambda=lam), budget_scale=1.0) for lam in soft_lambdas]
  out += [dict(name="dual_lagrangian_mean", objective="dual_lagrangian",
               loss=dict(dual_target="mean"), budget_scale=1.0),
          dict(name="dual_lagrangian_rate", objective="dual_lagrangian",
               loss=dict(dual_target="rate"), budget_scale=1.0)]
  out += [dict(name=n, objective=n, loss={}, budget_scale=1.0)
          for n in ("worst_case", "grpo", "gkd", "minillm", "sft")]
  return out


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
  c.settings_note = (
      "The shared settings were chosen once, before the study, from one-seed probes of "
      "grpo, gkd, cmdp and soft_lagrangian@0.1 on 500 test problems "
      "(docs/results/arith_tension.md, section E), and every method uses them unchanged: "
      "rollout temperature 0.7 (at 1.0 a weaker student's samples were mostly wrong: 25% "
      "sampled against 51% greedy); d at the 0.9 quantile of the initial student's sampled "
      "KL (at the median, 0.24 nats for a stronger student, d cut through ordinary "
      "responses, so every method sat near 50% satisfaction); learning rate 2.5e-5 for 50 "
      "steps of 8 prompts x 8 samples (at 5e-5 for 60 steps grpo lost 10 points on the "
      "problems without a multiplication, at 2e-5 under 1), the number of steps set by the "
      "study's 90-minute limit.")
  # Where the report goes: "" = <workdir>/results; the committed report was written with
  # `--output_dir docs/results` (python -m cmdp.study --help).
  c.output_dir = ""
  c.seeds = 5  # seeds 0..seeds-1, each shared by every method (paired)
  c.compilation_cache = True  # JAX's persistent cache in <workdir>/jax_cache (seeds > 0 reuse)

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

  # Budget d: this quantile of the initial student's per-sequence cost, measured once.
  c.calibration = ml_collections.ConfigDict(dict(quantile=0.9, prompts=64, seed=0))

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
  r.loss.group_size = 8  # samples per prompt (the reward is sparse: 8 give most groups a 1)
  r.rollout.max_new_tokens = 72
  r.rollout.temperature = 0.7
  r.batch_size = 64  # 8 prompts x 8 samples
  r.num_steps = 50
  r.optimizer.learning_rate = 2.5e-5
  r.checkpoint_every = 0  # final checkpoint only: runs are short
  r.keep_checkpoints = 1
  r.log_every = 10
  r.progress_bar = False
  c.run = r

  c.methods = methods()
  c.eval = ml_collections.ConfigDict(dict(
      num_examples=1_000,  # held-out problems (the test split)
      data_seed=0,  # generator seed of the test split
      batch_size=250,  # prompts per generation batch
      max_new_tokens=72,  # response cap
      # samples per problem at the rollout temperature (sampled accuracy, satisfaction, KL;
      # the same keys for every run), next to the greedy decode
      pass_k=1,
  ))
  c.report = ml_collections.ConfigDict(dict(
      reference="cmdp",  # paired comparisons are (method - reference)
      soft_methods=tuple(m["name"] for m in c.methods
                         if m["objective"] == "soft_lagrangian"),
      gkd_grpo="soft_lagrangian@0.01",  # the paper's GKD-GRPO
      frontiers=dict(
          cmdp=[m["name"] for m in c.methods if m["objective"] == "cmdp"],
          soft_lagrangian=[m["name"] for m in c.methods
                           if m["objective"] == "soft_lagrangian"]),
  ))

  if arg.small:
    _small(c)
  return c


def _small(c):
  """Tiny models, 2 seeds, 4 methods, a few steps: the end-to-end test (< 2 min, 2 cores)."""
  c.title += " (small smoke run)"
  c.output_dir = ""
  c.seeds = 2
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
  c.calibration.prompts = 4
  c.run.mesh.num_devices = 1  # one device even where tests simulate 8
  c.run.data.train_size = 64
  c.run.rollout.max_new_tokens = 24
  c.run.loss.group_size = 4
  c.run.batch_size = 8
  c.run.num_steps = 2
  c.run.log_every = 1
  keep = ("cmdp", "cmdp@2d", "soft_lagrangian@0.01", "grpo")
  c.methods = [m for m in c.methods if m["name"] in keep]
  c.report.soft_methods = ("soft_lagrangian@0.01",)
  c.report.frontiers = dict(cmdp=["cmdp", "cmdp@2d"], soft_lagrangian=["soft_lagrangian@0.01"])
  c.eval.num_examples = 48
  c.eval.batch_size = 24
  c.eval.max_new_tokens = 24
