r"""Evaluates a run: `python -m cmdp.evaluate --config configs/NAME.py --workdir DIR`.

Restores the student from `DIR/checkpoints` (`--checkpoint STEP`, default the latest),
evaluates it (and the teacher / initial student if `eval.include_*` is set; the initial
student is the healed one when the config heals) on the test split, writes `DIR/eval.json`
and `DIR/eval.md` and prints the table with 95% intervals. Library INFO logs are off
unless `--verbose`.
"""
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (holds checkpoints/).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to evaluate (default: latest).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs (orbax, absl).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, checkpoint: int | None = None) -> dict:
  """Evaluates the checkpoint of `workdir`; returns the results keyed by model name."""
  from cmdp import evaluation  # pylint: disable=g-import-not-at-top
  from cmdp.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from cmdp.training import eval_loop, experiment, trainer  # pylint: disable=g-import-not-at-top
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
  results = run(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)
  print(f"\nResults ({_WORKDIR.value}, 95% intervals):\n\n{report.table(results)}")


if __name__ == "__main__":
  app.run(main)
