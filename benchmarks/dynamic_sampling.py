r"""The cost of a training step with dynamic sampling on and off: rollouts and update apart.

    python benchmarks/dynamic_sampling.py --config configs/smollm2_sums.py --steps 6
    python benchmarks/dynamic_sampling.py --config configs/smollm2_sums.py --arg objective=grpo
    python benchmarks/dynamic_sampling.py --config configs/tiny.py --steps 2
    python benchmarks/dynamic_sampling.py --config configs/tiny.py --modes on,kept

Modes (`--modes`, default all three): `off`; `on` (dynamic sampling, the step running the
teacher's forward itself); `kept` (on, with `dynamic_sampling.keep_teacher_logits`: the
step reads the signal pass's teacher logits; for an objective that reads no teacher it is
`on`). Each mode runs `--steps` training steps from the config's initial student (the budget as
configured, no calibration) after one warm-up step that compiles: the batch phase
(`cmdp.training.rollouts.next_batch`: the generation batches' rollouts, rewards and, when
on, the row-signal program) and the update (the train step) are timed apart. Printed per
mode: generation batches per step, seconds per step of each phase, generated tokens per
second over the batch phase, the share of the step's groups with contrast, and the
updates skipped for want of a gradient; then the peak memory.
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import load_config, peak_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

from cmdp import data  # pylint: disable=wrong-import-position
from cmdp.training import experiment, rollouts, trainer  # pylint: disable=wrong-import-position


def run(config, steps: int) -> dict:
  """Times `steps` steps (after a compiling one) of `config`; returns the medians."""
  exp = experiment.build(config)
  state, shardings = trainer.create_state(exp, exp.student.params)
  train_step = exp.make_train_step(exp.hp, shardings)
  it = data.PromptIterator(exp.train_examples, rollouts.draw_prompts(config), seed=config.seed)
  rows = {k: [] for k in ("batch_s", "update_s", "generation_batches", "new_tokens",
                          "groups_with_contrast", "skipped")}
  for step in range(steps + 1):
    t0 = time.perf_counter()
    batch, host = rollouts.next_batch(exp, state, it, step, True)
    jax.block_until_ready(batch)
    t1 = time.perf_counter()
    state, metrics = train_step(state, exp.step_teacher_params, batch)
    metrics = jax.device_get(metrics)
    t2 = time.perf_counter()
    if step == 0:
      continue
    rows["batch_s"].append(t1 - t0)
    rows["update_s"].append(t2 - t1)
    rows["generation_batches"].append(host.get("generation_batches", 1.0))
    rows["new_tokens"].append(host["new_tokens"])
    rows["groups_with_contrast"].append(float(metrics["groups_with_contrast"]))
    rows["skipped"].append(float(metrics["skipped"]))
  return {k: float(np.mean(v) if k in ("generation_batches", "groups_with_contrast", "skipped")
                   else np.median(v)) for k, v in rows.items()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--arg", default=None)
  p.add_argument("--set", action="append", default=[])
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--modes", default="off,on,kept", help="comma-separated: off, on, kept")
  args = p.parse_args()
  results = {}
  for mode in args.modes.split(","):
    config = load_config(args.config, args.arg, args.set)
    config.dynamic_sampling.enabled = mode != "off"
    config.dynamic_sampling.keep_teacher_logits = mode == "kept"
    results[mode] = run(config, args.steps)
  ds, g = config.dynamic_sampling, config.rollout.group_size
  print(f"\nconfig {args.config}:{args.arg or ''}  objective {config.objective}, "
        f"{config.batch_size // g} prompts x {g} "
        f"a step; generation batches of {ds.generation_prompts or 'the step'} prompts, at most "
        f"{ds.max_generation_batches}; {args.steps} steps a mode, devices {jax.device_count()} "
        f"({jax.devices()[0].platform})")
  print("| dynamic sampling | generation batches / step | rollouts + signal s / step | "
        "update s / step | whole s / step | generated tokens/s | groups with contrast | "
        "updates skipped |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for mode, r in results.items():
    print(f"| {mode} | {r['generation_batches']:.2f} | {r['batch_s']:.3f} | "
          f"{r['update_s']:.3f} | {r['batch_s'] + r['update_s']:.3f} | "
          f"{r['new_tokens'] / r['batch_s']:.0f} | {r['groups_with_contrast']:.0%} | "
          f"{r['skipped']:.0%} |")
  print(f"peak memory: {peak_memory()}")


if __name__ == "__main__":
  main()
