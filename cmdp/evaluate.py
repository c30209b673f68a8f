r"""Evaluates a run: `python -m cmdp.evaluate --config configs/NAME.py --workdir DIR`.

Restores the student from `DIR/checkpoints` (`--checkpoint STEP`, default the latest),
evaluates it (and the teacher / initial student if `eval.include_*` is set) on the test
split and writes `DIR/eval.json` and `DIR/eval.md`.
"""
import logging as py_logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (holds checkpoints/).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to evaluate (default: latest).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, checkpoint: int | None = None) -> dict:
  """Evaluates the checkpoint of `workdir`; returns the results keyed by model name."""
  from cmdp import evaluation  # pylint: disable=g-import-not-at-top
  from cmdp.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from cmdp.training import eval_loop, experiment, trainer  # pylint: disable=g-import-not-at-top
  exp = experiment.build(config)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  step = checkpoint if checkpoint is not None else checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f"--workdir={workdir!r} holds no checkpoint to evaluate.")
  state, _ = trainer.create_state(exp, exp.student.params)
  state, meta = checkpointer.restore(state, exp.student.config, step)
  checkpointer.close()
  exp = exp.with_hp(exp.hp.replace(budget=meta["budget"]))
  results = eval_loop.evaluate_baselines(exp, exp.student.params, exp.hp)
  results["student"] = eval_loop.evaluate(exp, state.params, "student", exp.hp)
  evaluation.write_results(workdir, step, results)
  return results


def main(argv):
  del argv
  py_logging.getLogger().setLevel(py_logging.INFO)
  run(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)


if __name__ == "__main__":
  app.run(main)
