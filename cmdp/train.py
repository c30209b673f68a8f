r"""Runs an experiment: `python -m cmdp.train --config configs/NAME.py --workdir DIR`.

A config file's argument (after `:`) picks its variants; `objective=NAME` switches the
objective and applies its preset. Config fields are overridden on the command line, e.g.
`--config.loss.budget=2.0 --config.num_steps=20`; a misspelt field is an error. A workdir
that holds checkpoints is resumed from its latest one. A mistake in the command (a field
that cannot work, a checkpoint of another config) is one line naming the field and the
fix; `--verbose` adds the traceback and the libraries' INFO logs.

Multi-host (one process per host): `CMDP_MULTIHOST=1` calls `jax.distributed.initialize()`,
with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID when set (SLURM; a TPU VM
slice needs none). Each process then reads its own rows of every batch (of training, budget
calibration and evaluation; their host figures are gathered); process 0 writes the logs and
evaluation results; checkpoints are written by all processes together (orbax).
"""
import os

from absl import flags
import jax
from ml_collections import config_flags

from cmdp import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, CONFIG[:ARG].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs (orbax, absl, "
                             "jax); off by default, so the console shows the run itself.")
flags.mark_flags_as_required(["config", "workdir"])


def distributed_settings(environ) -> dict:
  """`jax.distributed.initialize` arguments from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID when set (launch/slurm_gpu.sh sets them); on a TPU VM slice none is
  needed: jax finds the slice itself."""
  out = {}
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    out["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
  for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if environ.get(name):
      try:
        out[key] = int(environ[name])
      except ValueError:
        raise SystemExit(f"{name}={environ[name]!r} must be an integer.") from None
  return out


def main(argv):
  del argv
  from cmdp.training import logging as log_lib  # pylint: disable=g-import-not-at-top
  log_lib.set_log_levels(_VERBOSE.value)
  if os.environ.get("CMDP_MULTIHOST") == "1":  # one process per host (TPU pod, SLURM)
    jax.distributed.initialize(**distributed_settings(os.environ))
  from cmdp.training import trainer  # pylint: disable=g-import-not-at-top
  trainer.train(_CONFIG.value, _WORKDIR.value)


def usage() -> str:
  """What `--help` prints before the options: an example, the configs and the objectives."""
  from cmdp.objectives import available_objectives  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  configs = "\n".join(f"  {path:<26} {summary}" for path, summary in cli.config_summaries()
                      if not path.startswith("configs/study_"))
  objectives = textwrap.fill(", ".join(sorted(available_objectives())) + ".", 88,
                             initial_indent="  ", subsequent_indent="  ")
  return f"""python -m cmdp.train --config CONFIG[:ARG] --workdir DIR [--config.FIELD=VALUE ...]

Trains (or resumes) the experiment CONFIG in DIR: metrics.jsonl, TensorBoard events,
checkpoints, config.json and, at the end, eval.json / eval.md.

Examples:
  python -m cmdp.train --config configs/tiny.py --workdir /tmp/cmdp_tiny
  python -m cmdp.train --config configs/tiny.py:objective=dual_lagrangian --workdir /tmp/t \\
      --config.loss.budget=0.5 --config.num_steps=20

Configs (ARG after ':' picks variants; each file's docstring says how to launch it and what
it costs; configs/study_*.py are run by python -m cmdp.study):
{configs}

Objectives (pick one with the config's argument, e.g. configs/tiny.py:objective=grpo, which
also applies its preset; docs/method.md):
{objectives}

Every config field: docs/configuration.md. What a run writes: docs/metrics.md."""


def _hint(message: str, argv: list[str]) -> str:
  """The fix for an objective switched with --config.objective instead of the argument."""
  if message.startswith("config.loss") and any(a.startswith("--config.objective")
                                               for a in argv):
    return ("Switch objectives with the config's argument instead (--config "
            "configs/NAME.py:objective=OBJECTIVE): it applies the objective's preset and the "
            "config's settings for it.")
  return ""


if __name__ == "__main__":
  cli.run(main, "python -m cmdp.train", usage(), _hint)
