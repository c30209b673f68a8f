r"""The arithmetic comparison, protocol version 2 (issue 31): cmdp with and without its
boundary term against the hinge and the Lagrangians, at a budget a grpo-only pilot stressed.

    python -m cmdp.study --config configs/study_arith.py --workdir /work/studies/arith_pilot \
        --pilot
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

Version 2 (`PROTOCOL`, written before any of its runs, the pilot's included): the families
of `protocol.V2_FAMILIES` on one grid {0.3, 3} (`cmdp_terminal`, the terminal penalty
without the boundary term, is the control for the term; `cmdp_scaled` is dropped), budgets
at q50 and at the lower quantile the pilot (`PILOT`) chooses, with the learning rate it
chooses; 5 paired seeds. The comparison refuses to run until the pilot's choice is recorded
in `CHOICE` (`protocol.require_choice`).

Expected compute (2 idle cores): the shared stages once (the supervised stage measured 64
min, calibration and the first evaluations 3 min), the pilot 12 grpo runs (about 12 min),
the comparison 100 runs (20 per seed: 9 constrained settings at each budget and the 2
anchors) at about 55 s each (40 steps, 500 problems x 2 samples; the version-1 runs took 58
s on average), about 95 min.

Earlier reports of this setting stay as dated records: docs/results/arith_2026-11-30.md (15
methods, nats-scaled knobs, one budget) and docs/results/arith.md (version 1, the SmolLM2
study's first protocol, budgets q50 and q90, 2026-12-06). Version 2 writes `arith_v2.md`
(`.json`, `.png`) and its pilot `arith_v2_pilot.md` (`.json`).

Argument: `small` (tiny models, 1 seed, 2 methods, 2 steps, 48 evaluation problems, fixed
budgets q50 and q30 in place of the pilot's: the CI smoke test).
"""
import ml_collections

from cmdp.study import protocol
from cmdp.training.config import base_config, model_fields, parse_arg

GRID = (0.3, 3.0)  # n, and lambda d, in task-reward units per budget: every family
MEDIAN = 0.5  # the upper budget: the median of the initial student's sampled C(y)

# The grpo-only pilot (`python -m cmdp.study --pilot`), declared before it ran: its seeds (the
# comparison's are 0-4), the candidate budgets every run is read at, the settings from least
# to most stress, and the choice rule (`cmdp.study.pilot.analysis.choose`).
PILOT = dict(
    seeds=(1000, 1001, 1002),
    quantiles=(0.2, 0.3, 0.4, 0.5),
    # (learning rate, steps): 40 steps fixed by the 90-minute limit (100 runs of about 55 s)
    settings=tuple(dict(learning_rate=lr, num_steps=40) for lr in (2.5e-5, 5e-5, 1e-4, 2e-4)),
    target="q50",  # where grpo must lose `stress_points`: the median budget
    lower=(0.2, 0.3, 0.4),  # the lower budget's candidates
    stress_points=0.08,  # 8 points of sampled satisfaction, seed mean
)
# The pilot's choice (`quantile`, `learning_rate`, `num_steps`), recorded with its date and
# command in `CHOICE_NOTE` after it ran, by the declared rule (None until then: the
# comparison refused to run).
CHOICE = dict(quantile=0.4, learning_rate=5e-05, num_steps=40)
CHOICE_NOTE = (
    "The pilot ran on 2026-12-08 at commit 09e7f4c, after its declaration (commit d91b051): "
    "`python -m cmdp.study --config configs/study_arith.py --workdir "
    "/work/studies/arith_pilot --pilot` (12 grpo runs, seeds 1000-1002; report "
    "docs/results/arith_v2_pilot.md). Its calibration: d = 0.7607, 0.9613, 1.144, 1.333 at "
    "q20, q30, q40, q50; the initial student 79.2% greedy, 28.1 / 37.5 / 46.0 / 53.9% of "
    "samples within d. grpo's seed-mean change in sampled satisfaction (points, ± 95% "
    "t-interval, 3 seeds) at q20 / q30 / q40 / q50: lr 2.5e-5: -3.1 ± 3.7 / -1.9 ± 1.7 / "
    "-2.9 ± 0.9 / -4.3 ± 2.1; lr 5e-5: -4.5 ± 0.8 / -4.5 ± 1.7 / -6.3 ± 2.3 / -8.3 ± 1.1; "
    "lr 1e-4: -9.5 ± 4.1 / -10.4 ± 6.0 / -12.4 ± 3.8 / -15.0 ± 5.5; lr 2e-4: -20.4 ± 8.8 / "
    "-26.8 ± 12.2 / -32.4 ± 15.3 / -36.8 ± 17.7. By the declared rule: learning rate 5e-5 "
    "(the smallest whose seed-mean fall at q50 reaches 8 points: 8.3), 40 steps, and the "
    "lower budget q40 (its largest fall of q20, q30, q40 at that rate: 6.3); the stress "
    "target is met. The comparison runs on the pilot's models: copy "
    "/work/studies/arith_pilot/pretrain into its workdir before it starts.")

PROTOCOL = """\
* **Version 2** (issue 31), declared before any of its runs, the pilot's included.
* **Cost and units.** `C(y)` = the sum over response tokens of the exact KL(student || teacher)
  (characters), in nats per sequence, on the deployed student, at the states of samples at
  the training temperature 0.7.
* **Reading.** `P(C(y) <= d) >= 1 - delta`: satisfaction is the share of sampled responses
  (2 per problem, 500 held-out problems) within `d`.
* **Budgets.** `d` at the 0.5 quantile and at a lower quantile `q_lo` in {0.2, 0.3, 0.4} of the
  initial student's `C(y)` on 512 samples (64 held-out calibration problems x 8), calibrated
  once; `q_lo` is the pilot's.
* **Stress, set before the comparison by a grpo-only pilot** (`python -m cmdp.study --pilot`):
  seeds 1000-1002 (never the comparison's), learning rates {2.5e-5, 5e-5, 1e-4, 2e-4} at 40
  steps, each run read at q20, q30, q40 and q50. *Rule:* the learning rate is the smallest at
  which grpo's seed-mean sampled satisfaction at q50 falls by at least 8 points from the
  initial student's; `q_lo` is the quantile of {0.2, 0.3, 0.4} with the largest seed-mean
  fall at that rate (ties: the higher quantile). If no rate reaches 8 points: the largest
  rate, and the pilot's report and this config say the stress target was not met. The choice
  is recorded in this config, dated and with its command, before the first comparison run;
  the comparison refuses to run without it.
* **Knobs, the same grid {0.3, 3} in budget units for every constrained family:**
  `cmdp_terminal` (the terminal penalty without the boundary term, `boundary_width = 0`: the
  control), `cmdp` (the terminal penalty with the boundary term, `boundary_width = 0.1`: the
  shipped default), `cmdp_hinge`, `soft_lagrangian` (`lambda d`); `dual_lagrangian` with the
  rate target `1 - q`. Anchors: `grpo`, `gkd`, trained once per seed and read at both budgets.
* **Runs.** 40 steps of 8 prompts x 8 samples (dynamic sampling, at most 4 generation batches
  a step), the pilot's learning rate, temperature 0.7, 72 new characters at most; 5 paired
  seeds (0-4); evaluation at the end, greedy and 2 samples per problem.
* **Rules.** As version 1: *holds* (final sampled satisfaction >= initial - 2 points, every
  seed), *informative* (grpo loses >= 5 points, seed mean), *beats* (a cmdp family's best
  holding setting more accurate than the best holding Lagrangian setting in every seed, or
  holding where none does), for `cmdp` and `cmdp_terminal` alike; `cmdp_hinge` beside them."""


def get_config(arg=None):
  arg = parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.name = "arith_v2"  # report files: <output_dir>/<name>.md / .png / .json
  c.title = ("Evidence study: constrained distillation on generated arithmetic, protocol "
             "version 2 (the boundary term at a stressed budget)")
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
      "The shared settings other than the learning rate were chosen once, before version 1, "
      "from one-seed probes (docs/results/arith_tension.md, section E), and every method uses "
      "them unchanged: rollout temperature 0.7 (at 1.0 a weaker student's samples were mostly "
      "wrong), batches of 8 prompts x 8 samples, 40 steps (the 90-minute limit). The learning "
      "rate and the lower budget are the grpo-only pilot's (protocol). " + CHOICE_NOTE)
  # Where the report goes: "" = <workdir>/results; a committed report is written with
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

  c.pilot = ml_collections.ConfigDict(PILOT)
  c.pilot.choice = CHOICE
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
  r.optimizer.learning_rate = 2.5e-5  # version 1's; the comparison's is the pilot's choice
  r.checkpoint_every = 0  # final checkpoint only: runs are short
  r.keep_checkpoints = 1
  r.log_every = 10
  r.progress_bar = False
  c.run = r

  protocol.apply_choice(c, MEDIAN, GRID)  # the budgets, methods, learning rate and steps
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
  """Tiny models, 1 seed, 2 methods, a few steps, fixed budgets q50 and q30 (no pilot): the
  end-to-end test (2 CPU cores)."""
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
  c.run.log_every = 1
  # Fixed budgets and settings in place of a pilot's choice: the smoke run has no pilot.
  c.pilot.choice = dict(quantile=0.3, learning_rate=c.run.optimizer.learning_rate,
                        num_steps=2)
  protocol.apply_choice(c, MEDIAN, GRID)
  c.pilot.seeds = (1000,)  # a pilot smoke run: one seed, two settings of 2 steps
  c.pilot.settings = tuple(dict(s, num_steps=2) for s in PILOT["settings"][:2])
  keep = ("cmdp@3/q50", "grpo")
  c.methods = [m for m in c.methods if m["name"] in keep]
  c.eval.num_examples = 48
  c.eval.batch_size = 24
  c.eval.max_new_tokens = 24
