r"""Does cmdp hold its budget on a real LLM? SmolLM2, protocol version 2 (issue 31): cmdp with
and without its boundary term at a budget a grpo-only pilot stressed.

    python -m cmdp.study --config configs/study_smollm2.py --workdir /work/studies/smollm2_pilot \
        --pilot
    python -m cmdp.study --config configs/study_smollm2.py --workdir /tmp/study_smollm2 \
        --output_dir docs/results
    python -m cmdp.study --config configs/study_smollm2.py:small --workdir /tmp/study_small

The main job's models and task (configs/smollm2_sums.py): the SmolLM2-135M-Instruct teacher
(the Q4_1 GGUF, dequantised to float32), a 20-layer student cut from it and refitted by
layer-wise least squares (once, in DIR/heal), sums of one- and two-digit numbers as plain
prompts. One calibration (1,024 samples of the refitted student on held-out calibration
problems) gives both budgets. The protocol below (version 2), the knob grid, the pilot and
its choice rule, and the decision rules were written before any run of this version.

Version 1's report (budgets q50 and q90, `cmdp_scaled` in the grid, no control for the
boundary term) stays as a dated record in docs/results/smollm2.md (`.json`, `.png`);
version 2 writes `smollm2_v2.md` (`.json`, `.png`) and its pilot `smollm2_v2_pilot.md`.
The comparison refuses to run until the pilot's choice is recorded in `CHOICE`.

Expected compute (2 cores; version 1 measured heal, calibration and the first evaluations
5.3 min once, a 12-step run 4.5 min with steps of 13-14 s): the pilot 12 grpo runs, 6 of 12
steps and 6 of 24 (about 72 min); the comparison 20 runs a seed (9 constrained settings at
each budget, 2 anchors), 3 seeds: about 90 min a seed at 12 steps, about 150 min a seed
(7.5 min a run) at 24.

Arguments: `small` (a smoke run of the whole pipeline on the same task with a tiny random
teacher and character tokens in place of SmolLM2: refit, calibration, 2-step runs of 3
methods, one seed, fixed budgets q50 and q30 in place of the pilot's, the report; the CI
test, about a minute), `seeds=N` (default 3).
"""
import ml_collections

from cmdp.study import protocol
from cmdp.training.config import config_module, model_fields, parse_arg

GRID = (0.3, 3.0)  # n, and lambda d, in task-reward units per budget: the same for every family
MEDIAN = 0.5  # the upper budget: the median of the initial student's sampled C(y)

# The grpo-only pilot (`python -m cmdp.study --pilot`), declared before it ran: its seeds (the
# comparison's are 0-2), the candidate budgets every run is read at, the settings from least
# to most stress (cheapest first), and the choice rule (`cmdp.study.pilot.analysis.choose`).
PILOT = dict(
    seeds=(1000, 1001, 1002),
    quantiles=(0.2, 0.3, 0.4, 0.5),
    settings=(dict(learning_rate=3e-6, num_steps=12), dict(learning_rate=6e-6, num_steps=12),
              dict(learning_rate=3e-6, num_steps=24), dict(learning_rate=6e-6, num_steps=24)),
    target="lower",  # where grpo must lose `stress_points`: the best lower candidate
    lower=(0.2, 0.3, 0.4),  # the lower budget's candidates
    stress_points=0.08,  # 8 points of sampled satisfaction, seed mean
)
# The pilot's choice (`quantile`, `learning_rate`, `num_steps`), recorded with its date and
# command in `CHOICE_NOTE` after it ran; None until then (the comparison refuses to run).
CHOICE = None
CHOICE_NOTE = ""

PROTOCOL = """\
* **Version 2** (issue 31), declared before any of its runs, the pilot's included.
* **Cost and units.** `C(y)` = the sum over response tokens of the exact KL(student || teacher)
  at each state, in nats per sequence, on the deployed student (temperature 1), at the states
  of samples at the training temperature 0.7.
* **Reading.** `P(C(y) <= d) >= 1 - delta`: a method's satisfaction is the share of its
  sampled responses (2 per problem, 200 held-out problems) within `d`.
* **Budgets.** `d` at the 0.5 quantile and at a lower quantile `q_lo` in {0.2, 0.3, 0.4} of the
  initial (refitted) student's `C(y)` on 1,024 samples (128 held-out calibration problems x
  8), calibrated once and shared by every run; `q_lo` is the pilot's.
* **Stress, set before the comparison by a grpo-only pilot** (`python -m cmdp.study --pilot`):
  seeds 1000-1002 (never the comparison's), the settings (learning rate, steps) (3e-6, 12),
  (6e-6, 12), (3e-6, 24), (6e-6, 24) in that order (cheapest first; 3e-6 is the main job's
  rate), each run read at q20, q30, q40 and q50. *Rule:* the setting is the first in that
  order at which grpo's seed-mean sampled satisfaction falls by at least 8 points from the
  initial student's at one of q20, q30, q40; `q_lo` is the one of them with the largest
  seed-mean fall at that setting (ties: the higher quantile). If no setting reaches 8
  points: the last setting, and the pilot's report and this config say the stress target
  was not met. The choice is recorded in this config, dated and with its command, before
  the first comparison run; the comparison refuses to run without it.
* **Knobs, in budget units, the same grid {0.3, 3} for every constrained family:**
  `cmdp_terminal` (Sauté's terminal penalty, `-n` once when the budget runs out, without the
  boundary term: `boundary_width = 0`, the control), `cmdp` (the same with the boundary term,
  `boundary_width = 0.1`: the shipped default), `cmdp_hinge` (`-n (C - d)_+ / d`),
  `soft_lagrangian` (`lambda d = g`); `dual_lagrangian` with the rate target `delta` = the
  initial violation rate at that budget (`1 - q`). Anchors: `grpo` and `gkd`, trained once
  per seed and read at both budgets.
* **Runs.** Every run: the pilot's steps and learning rate, 8 prompts x 8 samples a step (G =
  8, leave-one-out baseline, dynamic sampling as the main job), rollout temperature 0.7, 16
  new tokens at most; 3 paired seeds (seed i shares the data order and sampling of every
  method); evaluation at the end on 200 held-out problems, greedy and 2 samples each. No
  early stopping.
* **Rules.** As version 1: *holds*: the final sampled satisfaction is at least the initial
  student's minus 2 points, in every seed. *informative*: grpo loses at least 5 points of
  sampled satisfaction (seed mean) at that `d`; if not, nothing is concluded from it.
  *beats*: a cmdp family's best holding setting (highest seed-mean greedy accuracy) is more
  accurate than the best holding soft or dual setting with a positive paired difference in
  every seed, or it holds where none of them does. The headline is `cmdp` (the shipped
  default) against its control `cmdp_terminal`, each judged by that rule; `cmdp_hinge` is
  reported beside them."""


def _main_job(arg: str):
  """configs/smollm2_sums.py's config (the main job) with `arg`."""
  return config_module(__file__, "smollm2_sums.py").get_config(arg)


def get_config(arg=None):
  arg = parse_arg(arg, small=False, seeds=3)
  c = ml_collections.ConfigDict()
  c.name = "smollm2_v2"  # report files: <output_dir>/<name>.md / .png / .json
  c.title = ("Does cmdp hold its budget on a real LLM? SmolLM2-135M, a pre-registered "
             "comparison, protocol version 2 (the boundary term at a stressed budget)")
  c.description = (
      "The main job's setting (configs/smollm2_sums.py): the SmolLM2-135M-Instruct teacher "
      "(Q4_1 GGUF, dequantised to float32) and a 20-layer student cut from it (every third "
      "layer from layer 1 dropped) and refitted by layer-wise least squares on 256 teacher "
      "samples, on sums of one- and two-digit numbers (reasoning-gym basic_arithmetic) as "
      "plain completion prompts.")
  c.protocol = PROTOCOL
  c.settings_note = ("Every run samples as the main job does (dynamic sampling; an update "
                     "without gradient leaves the student unchanged). The learning rate, the "
                     "steps and the lower budget are the grpo-only pilot's (protocol). "
                     + CHOICE_NOTE)
  c.output_dir = ""  # "" = <workdir>/results; the committed report: --output_dir docs/results
  c.seeds = int(arg.seeds)
  c.compilation_cache = True  # JAX's persistent cache in <workdir>/jax_cache: compile once
  c.keep_run_checkpoints = False  # True keeps each finished run's checkpoint (the trained student)
  c.pilot = ml_collections.ConfigDict(PILOT)
  c.pilot.choice = CHOICE
  c.calibration = ml_collections.ConfigDict(dict(seed=0))
  c.rules = ml_collections.ConfigDict(dict(hold_margin=0.02, stress_points=0.05))
  c.eval = ml_collections.ConfigDict(dict(batch_size=100, pass_k=2))

  run = _main_job("small" if arg.small else None)
  run.rollout.group_size = 8  # G = 8 samples per prompt
  run.batch_size = 64  # 8 prompts x 8 samples
  run.num_steps = 12  # version 1's; the comparison's are the pilot's choice
  run.calibration_prompts = 128  # x 8 = 1,024 samples
  run.calibration_samples_per_prompt = 0  # group_size (8) of each, not the main job's 2
  run.calibration_batch_size = 64
  run.probe_every = 4
  c.run = run
  protocol.apply_choice(c, MEDIAN, GRID)  # the budgets, methods, learning rate and steps

  if arg.small:
    c.title += " (small smoke run)"
    c.seeds = min(c.seeds, 1)
    # A tiny random teacher (character tokens) and a student cut from it, refitted.
    run.teacher.path, run.tokenizer = "", "char"
    run.teacher.random_init = model_fields(hidden_size=32, intermediate_size=64,
                                           num_layers=3, num_heads=2, num_kv_heads=1,
                                           head_dim=16, max_position_embeddings=256)
    run.student.cut_layers = (0, 2)
    run.mesh.num_devices = 1  # one device even where tests simulate 8
    run.data.max_prompt_len = 112  # characters of the plain prompt
    run.data.sft_max_len = 128
    run.rollout.group_size = 2
    run.batch_size = 4
    run.calibration_prompts = 4
    run.calibration_batch_size = 0
    run.probe_every = 1
    run.probe_prompts = 2
    c.eval.batch_size = 4
    c.compilation_cache = False  # JAX's cache is process-wide: not from inside a test run
    # Fixed budgets and settings in place of a pilot's choice: the smoke run has no pilot.
    c.pilot.choice = dict(quantile=0.3, learning_rate=run.optimizer.learning_rate,
                          num_steps=2)
    protocol.apply_choice(c, MEDIAN, GRID)
    c.pilot.seeds = (1000,)  # a pilot smoke run: one seed, two settings of 2 steps
    c.pilot.settings = tuple(dict(s, num_steps=2) for s in PILOT["settings"][:2])
    keep = ("cmdp@3/q50", "dual_lagrangian/q50", "grpo")  # dual: a state of its own
    c.methods = [m for m in c.methods if m["name"] in keep]
  return c
