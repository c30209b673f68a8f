r"""Evaluates a run: `python -m cmdp.evaluate --workdir DIR`.

Restores the student from `DIR/checkpoints` (`--checkpoint STEP`, default the latest) under
the config the run was trained with (`DIR/config.json`; `--config FILE` overrides it),
evaluates it (and the teacher / initial student if `eval.include_*` is set; the initial
student is the healed one when the config heals) on the test split, writes `DIR/eval.json`
and `DIR/eval.md` and prints the table with 95% intervals. Library INFO logs are off
unless `--verbose`.
"""
import json
import os

from absl import flags
import ml_collections
from ml_collections import config_flags

from cmdp import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, CONFIG[:ARG] (default: DIR/config.json, the "
    "config the run was trained with).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (holds checkpoints/).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to evaluate (default: latest).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs (orbax, absl).")
flags.mark_flags_as_required(["workdir"])
USAGE = """python -m cmdp.evaluate --workdir DIR [--checkpoint STEP] [--config CONFIG[:ARG]]

Evaluates the student of the run in DIR (its latest checkpoint, or STEP) under the config
it was trained with (DIR/config.json), or under --config; writes DIR/eval.json and
DIR/eval.md (docs/metrics.md) and prints the table with 95% intervals.

Example:
  python -m cmdp.train --config configs/tiny.py:objective=dual_lagrangian --workdir /tmp/t
  python -m cmdp.evaluate --workdir /tmp/t"""


def _check_workdir(workdir: str) -> None:
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir!r} does not exist; give the directory of "
                            "a run of `python -m cmdp.train`.")


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (`workdir/config.json`, written by cmdp.train)."""
  path = os.path.join(workdir, "config.json")
  _check_workdir(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--workdir={workdir!r} holds no config.json (the training run "
                            "writes it before its first step); give the run's config with "
                            "--config.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.lock()
  return config


def run(config, workdir: str, checkpoint: int | None = None) -> dict:
  """Evaluates the checkpoint of `workdir`; returns the results keyed by model name."""
  from cmdp import evaluation  # pylint: disable=g-import-not-at-top
  from cmdp.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from cmdp.training import eval_loop, experiment, trainer  # pylint: disable=g-import-not-at-top
  _check_workdir(workdir)
  exp = experiment.build(trainer.healed(config, workdir))
  checkpointer = ckpt_lib.Checkpointer(workdir)
  step = checkpoint if checkpoint is not None else checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir={workdir!r} holds no checkpoint to evaluate.")
  state, _ = trainer.create_state(exp, exp.student.params)
  initial = trainer.initial_params(exp, state) if exp.config.eval.include_initial_student \
      else None
  state, meta = checkpointer.restore(state, exp.student.config, step)
  checkpointer.close()
  exp = exp.with_hp(exp.hp.replace(budget=meta["budget"]))
  results = eval_loop.evaluate_baselines(exp, initial, exp.hp)
  results["student"] = eval_loop.evaluate(exp, state.params, "student", exp.hp)
  evaluation.write_results(workdir, step, results)
  return results


def main(argv):
  del argv
  from cmdp.evaluation import report  # pylint: disable=g-import-not-at-top
  from cmdp.training import logging as log_lib  # pylint: disable=g-import-not-at-top
  log_lib.set_log_levels(_VERBOSE.value)
  config = _CONFIG.value if flags.FLAGS["config"].present else run_config(_WORKDIR.value)
  results = run(config, _WORKDIR.value, _CHECKPOINT.value)
  print(f"\nResults ({_WORKDIR.value}, 95% intervals over questions):\n\n"
        f"{report.table(results)}\n{report.reward_cost_table(results)}")


if __name__ == "__main__":
  cli.run(main, "python -m cmdp.evaluate", USAGE)
