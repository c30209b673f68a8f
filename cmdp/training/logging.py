"""Metric writers: `DIR/metrics.jsonl`, TensorBoard event files and a progress bar.

Only process 0 writes (multi-host pods run one process per host); other processes get
writers that do nothing.
"""
from __future__ import annotations

import json
import logging as py_logging
import math
import os
import time
from typing import Mapping

import jax
import numpy as np
import tqdm


def set_log_levels(verbose: bool) -> None:
  """INFO from our own code and, with `verbose`, from every library; else only warnings
  from the libraries (orbax, absl, jax): the command-line tools' quiet console."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  py_logging.getLogger().setLevel(py_logging.INFO if verbose else py_logging.WARNING)
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
  py_logging.getLogger("cmdp").setLevel(py_logging.INFO)


def _to_float(v) -> float:
  v = float(np.asarray(v))
  return v if math.isfinite(v) else float("nan")


class MetricWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, *, start_step: int = 0, tensorboard: bool = True):
    """Opens the writers; rows logged after `start_step` by an earlier, killed run (steps
    the checkpoint does not hold) are dropped, so a resumed log has each step once."""
    self.active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
      kept = [r for r in read_metrics(workdir) if r["step"] <= start_step]
      with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    self._jsonl = open(path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.active or not metrics:
      return
    row = {"step": int(step), **{k: _to_float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The rows of `DIR/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def stage(name: str, message: str) -> None:
  """One console line for a stage of a run (`load`, `heal`, `calibrate`, `evaluate`,
  `train`, ...), from process 0, printed above any progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(f"{name:<10} {message}")


def _rate(per_s: float) -> str:
  """A rate a person reads at a glance: 3.2, 45, 1.2k."""
  if per_s >= 1_000:
    return f"{per_s / 1_000:.1f}k"
  return f"{per_s:.2g}" if per_s < 10 else f"{per_s:.0f}"


class Progress:
  """A tqdm bar over the steps of a stage (process 0 only): seconds per step, new tokens
  per second since the start, and the latest step's figures (`postfix`, e.g. reward, KL,
  satisfaction). No bar when no step is left to run (a refit-only heal, a finished run)."""

  def __init__(self, total: int, initial: int, enabled: bool = True, desc: str = "train"):
    enabled = enabled and initial < total
    self.bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                         desc=f"{desc:<10}", bar_format=(
                             "{desc} {n_fmt}/{total_fmt} {bar} [{elapsed}<{remaining}, "
                             "{rate_inv_fmt}{postfix}]"),
                         disable=not enabled or jax.process_index() != 0)
    self._t0 = time.perf_counter()
    self._tokens = 0

  def update(self, tokens: int, postfix: Mapping[str, float]) -> float:
    """Advances one step that generated `tokens` new tokens; returns new tokens/s since
    the start."""
    self._tokens += tokens
    rate = self._tokens / max(time.perf_counter() - self._t0, 1e-9)
    shown = {"new tok/s": _rate(rate)}
    shown.update({k: f"{v:.3g}" for k, v in postfix.items() if np.isfinite(v)})
    self.bar.set_postfix(shown, refresh=False)
    self.bar.update(1)
    return rate

  def close(self) -> None:
    self.bar.close()
