r"""`python -m cmdp.plan --config configs/qwen_math.py --topology v5e-32 [--json PATH]`.

Compiles the config's rollout, teacher scoring (inside the train step when the teacher
shares the student's mesh) and train step for the topology (abstract shapes: no weights,
no TPU) and prints per-device memory, whether it fits and the estimated step time. Config
fields are overridden as for training: `--config.batch_size=256`.
`--topology` must be read before jax starts, so it is taken from argv first.
"""
import sys

from cmdp import cli
from cmdp.plan import topology as topology_lib


def _topology_arg(argv: list[str]) -> str:
  """The value of --topology in argv (both `--topology X` and `--topology=X`)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--topology="):
      return arg.split("=", 1)[1]
    if arg == "--topology" and i + 1 < len(argv):
      return argv[i + 1]
  raise SystemExit("python -m cmdp.plan: --topology is required, e.g. --topology=v5e-32 or "
                   "--topology=cpu:8.")


def _configure() -> topology_lib.Topology:
  try:
    target = topology_lib.parse(_topology_arg(sys.argv[1:]))
  except ValueError as err:
    raise SystemExit(f"python -m cmdp.plan: {err}") from None
  topology_lib.configure_environment(target)
  return target


# `--help` needs no topology (and starts no jax).
TARGET = None if cli.wants_help(sys.argv) else _configure()

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import json
import logging as py_logging
import os
import re
import tempfile
import warnings

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
flags.DEFINE_string("topology", None, "TPU accelerator type (v5e-32, v4-64, v5p-128, "
                    "v6e-64, ...) or cpu:N.")
_JSON = flags.DEFINE_string("json", None, "Also write the plan as JSON to this path.")
_XLA_LOG = flags.DEFINE_string("xla_log", None, "Keep what XLA printed while compiling "
                                "(its warnings) in this file; by default only counted.")
_SEARCH = flags.DEFINE_integer("search", 4, "If the config does not fit: alternative "
                               "mesh / grad_accum_steps settings to try (0: none).")
_SMALLEST = flags.DEFINE_bool("smallest", False, "Find the smallest slice of --topology's "
                               "chip that fits the config (fsdp over its chips, the config's "
                               "tensor axis, microbatches that keep whole rows per chip).")
flags.mark_flags_as_required(["config", "topology"])


@contextlib.contextmanager
def _captured_stderr():
  """Collects what C++ libraries write to fd 2 (XLA's partitioner warnings) into `box[0]`.

  On an exception the text goes back to stderr, so nothing that explains a failure is lost.
  """
  box = []
  with tempfile.TemporaryFile() as tmp:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(tmp.fileno(), 2)
    failed = False
    try:
      yield box
    except BaseException:
      failed = True
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      box.append(tmp.read().decode(errors="replace"))
      if failed:
        sys.stderr.write(box[0])


def _xla_summary(text: str) -> str:
  """One line about what XLA printed while compiling ("" if nothing)."""
  warned = [l for l in text.splitlines() if re.match(r"[WE]\d{4}", l)]
  if not warned:
    return ""
  remat = sum("Involuntary full rematerialization" in l for l in warned)
  where = f"kept in {_XLA_LOG.value}" if _XLA_LOG.value else "--xla_log=PATH keeps them"
  return (f"xla      {len(warned)} compiler warnings ({remat} involuntary full "
          f"rematerializations: reshardings XLA could only do by replicating); {where}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger().setLevel(py_logging.WARNING)
  # Lowering with abstract inputs: jax notes donated buffers it cannot reuse; not our concern.
  warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
  from cmdp.plan import planner, report
  devices = topology_lib.devices(TARGET)
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  config = _CONFIG.value
  mesh = config.mesh
  try:
    with _captured_stderr() as xla_text:
      if _SMALLEST.value:
        tried = planner.smallest_slice(config, TARGET, search=0)
        if not tried:
          raise SystemExit("python -m cmdp.plan --smallest: no slice of this chip splits the "
                           "batch into whole rows per chip.")
        plan = tried[-1][1]
      else:
        plan = planner.make_plan(config, TARGET, devices, search=_SEARCH.value)
  except ValueError as err:  # a config that cannot run on this topology: say which field
    msg = str(err)
    if not (msg.startswith(("config.", "mesh ", "make_mesh(")) or "devices do not split" in msg):
      raise
    hint = ""
    if "devices" in msg:
      hint = (f" --topology={TARGET.name} has {TARGET.num_devices} devices; the config's mesh "
              f"is data={mesh.data} fsdp={mesh.fsdp} tensor={mesh.tensor}: override it, e.g. "
              "--config.mesh.data=-1 (the rest of the devices).")
    raise SystemExit(f"python -m cmdp.plan: {err}{hint}") from None
  if _XLA_LOG.value:
    with open(_XLA_LOG.value, "w") as f:
      f.write(xla_text[0])
  if _SMALLEST.value:
    print(report.smallest_text(tried))
  print(report.to_text(plan, name))
  summary = _xla_summary(xla_text[0])
  if summary:
    print(summary)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      result = report.to_json(plan, name)
      result["xla_warnings"] = len(re.findall(r"^[WE]\d{4}", xla_text[0], re.M))
      json.dump(result, f, indent=2)
    print(f"wrote {_JSON.value}")


USAGE = """python -m cmdp.plan --config CONFIG[:ARG] --topology TOPOLOGY [--json PATH] [--search=N]
    [--config.FIELD=VALUE ...]

Compiles the config's step for a TPU slice or N simulated CPU devices, without weights and
without a TPU, and prints per-device memory, whether it fits and the estimated step time
(docs/planner.md). TOPOLOGY: a Cloud TPU accelerator type (v4-64, v5e-32 = v5litepod-32,
v5p-128, v6e-64, ...) or cpu:N.

Examples:
  python -m cmdp.plan --config configs/tiny.py --topology cpu:8
  python -m cmdp.plan --config configs/qwen_math.py --topology v5p-128 --json plan.json"""

if __name__ == "__main__":
  cli.run(main, "python -m cmdp.plan", USAGE)
