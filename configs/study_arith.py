r"""Evidence study on generated GSM8K-format arithmetic: every objective, >= 5 seeds, CIs.

    python -m cmdp.study --config configs/study_arith.py --workdir /tmp/study_arith
    python -m cmdp.study --config configs/study_arith.py:small --workdir /tmp/study_small

The setting (runs on 2 CPU cores): a character-level teacher and a student with under half
its parameters, both trained from scratch by supervised learning on worked solutions
(`cmdp.study.pretrain`, cached). The teacher's curriculum is biased: its "Doubles / Triples
them." steps are written as additions (`mul_as_add`), so it is strong on problems without a
multiplication (86% greedy) and wrong on the others (3.7%); the student learns from correct
solutions (38% greedy on problems with a multiplication, 35% without). About half of the
RL and test problems have a multiplication, so maximising the task reward needs the student
to depart from the teacher there, which the KL budget d forbids.

soft_lagrangian penalises lambda * C(y), C the per-sequence KL in nats (d is about 36 nats
with the 1,400-step student): lambda * d, the penalty of a response exactly at the budget,
is 0.1, 0.36, 1.1 and 3.6 reward units for lambda = 0.003, 0.01, 0.03, 0.1 (reward is 0/1).

Status of the tension (docs/results/arith_tension.md, 1 seed, 500 problems, on-policy
sampling fixed): NOT SHOWN. At learning rate 1e-4 grpo ends with more reward than gkd
(greedy 30.2% vs 16.8% at temperature 1, F2; 30.4% vs 16.6% at rollout temperature 0.7
with 200 steps, T07) and beyond the budget on average (sampled KL 50 vs d = 36 nats; 54 vs
d = 30.5 at 0.7), gkd within it (97-98% of samples within d); but grpo never *gains*
reward over the initial student (36.6% greedy): not at temperature 0.7, 200 steps; not
with 128 sequences per step (16 x 8 or 32 x 4, 150 steps: level with the start); at 3e-4
it collapses; SGD loses reward too. Diagnosis (section D there): the gradient points the
right way (10 updates on 16 prompts raise their reward by 19 points at 1e-4) but does not
transfer (other prompts lose 5), so 16-prompt steps at 1e-4 cost held-out reward; at 3e-5
the training reward rises without a dip, but 100 steps gain only 1.8 sampled points (within
the intervals), and a 50-step warm-up to 1e-4 still loses (greedy 30.8%). The run settings
below are unchanged by those probes.

Argument: `small` (tiny models, 2 seeds, 4 methods, a few steps, 48 evaluation problems:
the CI smoke test, about 70 s of CPU time). Cost of the full study on 2 shared CPU cores:
about 46 min of pretraining (teacher 29 min, student about 17 min) and about 3-4 min per
run (100 steps of 64 sequences: 1.2 s per gkd step, 1.6-2.2 s per grpo step, measured
before the response-window change to the step; evaluation on 1,000 problems under 1 min),
14 methods x 5 seeds = 70 runs: about 3.5-4.5 hours. Finishing the whole study in 90
minutes would need about 77 s per run with the pretraining cached (about 38 s without):
some 30-40 steps of 64 sequences at the measured step cost, against the 100 steps that
show grpo's side of the comparison.
"""
import ml_collections

from cmdp.training.config import base_config, model_fields, parse_arg


def methods(soft_lambdas=(0.003, 0.01, 0.03, 0.1), budget_scales=(0.5, 2.0)):
  """Every method: name, registered objective, loss overrides, budget factor on d."""
  out = [dict(name="cmdp", objective="cmdp", loss={}, budget_scale=1.0)]
  out += [dict(name=f"cmdp@{s:g}d", objective="cmdp", loss={}, budget_scale=s)
          for s in budget_scales]
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
      "Multi-step arithmetic word problems in the GSM8K format (2-4 operations, worked "
      "steps `a+b=<<a+b=c>>c`, final `#### n`), a character-level teacher trained on a "
      "curriculum that solves every multiplication step as an addition, and a smaller "
      "student trained on correct solutions. Reward needs departing from the teacher on "
      "problems with a multiplication.")
  c.output_dir = "docs/results"  # "" = <workdir>/results
  c.seeds = 5  # seeds 0..seeds-1, each shared by every method (paired)
  c.compilation_cache = True  # JAX's persistent cache in <workdir>/jax_cache (seeds > 0 reuse)

  # The task everything trains on and is evaluated on (cmdp.data.arith.load_arith kwargs).
  c.task = ml_collections.ConfigDict(dict(
      min_ops=2, max_ops=4, min_start=2, max_start=15, max_operand=9, max_value=50,
      # add, subtract, multiply: about half of the problems have a multiplication, the
      # sub-type on which the teacher is wrong (3.7% greedy) and the student is not (38%)
      op_weights=(0.4, 0.4, 0.2)))

  # The supervised stage (cached in <workdir>/pretrain/<role>).
  teacher_model = model_fields(hidden_size=64, intermediate_size=192, num_layers=4,
                               num_heads=4, num_kv_heads=4, head_dim=16,
                               max_position_embeddings=256)
  student_model = model_fields(hidden_size=64, intermediate_size=160, num_layers=2,
                               num_heads=4, num_kv_heads=4, head_dim=16,
                               max_position_embeddings=256)
  c.pretrain = ml_collections.ConfigDict()
  for role, model, steps, overrides in (
      ("teacher", teacher_model, 1_200,
       dict(mul_as_add=True, op_weights=(0.4825, 0.4825, 0.035))),
      # The student sees multiplications more often, so it can solve some of them.
      ("student", student_model, 1_400, dict(op_weights=(0.4, 0.4, 0.2)))):
    c.pretrain[role] = ml_collections.ConfigDict(dict(
        model=model,  # architecture (random init)
        steps=steps,  # optimiser steps of cross-entropy on worked solutions
        batch_size=32,  # sequences per step
        train_size=30_000,  # distinct training problems
        task_overrides=overrides,  # task kwargs changed for this model's curriculum
        optimizer=dict(learning_rate=3e-3, warmup_steps=50, schedule="cosine"),
        checkpoint_every=250,  # an interrupted stage resumes from here
        seed=0,  # random init and data order
    ))

  # Budget d: this quantile of the initial student's per-sequence cost, measured once.
  c.calibration = ml_collections.ConfigDict(dict(quantile=0.5, prompts=64, seed=0))

  # Shared by every run (equal budgets): batch, rollouts, new tokens, optimiser, steps.
  r = base_config()
  r.tokenizer = "char"
  r.data.train = "arith"
  r.data.test = "arith"
  r.data.train_size = 5_000  # RL prompts
  r.data.test_size = 8  # the trainer's own split (unused: the study evaluates)
  r.data.system_prompt = "."  # short: every character is a token
  r.data.max_prompt_len = 128
  r.data.sft_max_len = 208
  r.loss.group_size = 8  # samples per prompt (the reward is sparse: 8 give most groups a 1)
  r.rollout.max_new_tokens = 88
  r.rollout.temperature = 1.0
  r.batch_size = 64  # 8 prompts x 8 samples
  r.num_steps = 100
  r.optimizer.learning_rate = 1e-4  # 3e-4 collapses grpo (docs/results/arith_tension.md)
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
      max_new_tokens=88,  # response cap
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
