"""configs/tiny.py with dotted-key overrides, as the command line would apply them."""
import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_train(config: str, workdir: str, *flags: str,
              timeout: int = 300) -> subprocess.CompletedProcess:
  """`python -m cmdp.train --config configs/<config> --workdir <workdir> <flags>`, as a user
  runs it from the repository root: on one CPU device, not the tests' eight."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if not f.startswith(("--xla_force_host_platform_device_count",
                           "--xla_backend_optimization_level")))
  return subprocess.run(
      [sys.executable, "-m", "cmdp.train", "--config", os.path.join(_ROOT, "configs", config),
       "--workdir", workdir, *flags], capture_output=True, text=True, timeout=timeout,
      cwd=_ROOT, env=env)


def load_config_file(name: str, arg: str | None = None):
  from cmdp.training.config import config_module  # pylint: disable=g-import-not-at-top
  return config_module(os.path.join(_ROOT, "configs", name)).get_config(arg)


def tiny_config(objective: str = "cmdp", **overrides):
  """The tiny config, locked, with `eval_at_end` off and the given `a.b=value` overrides."""
  config = load_config_file("tiny.py", f"objective={objective}")
  config.eval_at_end = False
  config.checkpoint_every = 0
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


def save_untrained_checkpoint(workdir: str, objective: str = "cmdp", step: int = 1) -> None:
  """A checkpoint of configs/tiny.py's untrained state (`objective=...`) in `workdir`,
  written directly: for tests of what restoring refuses, with no training step."""
  from cmdp.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from cmdp.training import experiment, trainer  # pylint: disable=g-import-not-at-top
  exp = experiment.build(load_config_file("tiny.py", f"objective={objective}"))
  state, _ = trainer.create_state(exp, exp.student.params)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  checkpointer.save(step, state, {"data": {}, "budget": 0.25, "objective": objective,
                                  "student_model": ckpt_lib.model_record(exp.student.config)},
                    wait=True)
  checkpointer.close()
