r"""Times one training step by phase and the update's model-FLOPs utilisation.

    python benchmarks/train_step.py --config configs/tiny.py
    python benchmarks/train_step.py --config configs/smollm2_sums.py \
        --set batch_size=64 --set rollout.group_size=8 --steps 3
    ... --no_group_sharing   # every row's prompt run on its own, for comparison

Phases: student rollout (KV-cache sampler), reward (decode + verifier, host), teacher
scoring (the teacher's forward on the student's sequences, timed alone for reference: it
runs INSIDE the update, microbatch by microbatch, on the student's mesh or on its own),
update (the train step). Each is timed after a warm-up step that compiles it. The
update's MFU is its model FLOPs (6 x params x tokens for the student's matmuls, the
vocabulary projection only where logits are computed, plus attention; 2 x for the
teacher's forward) per second over
this machine's own float32 matmul peak, measured in the same run with a large matmul.
"""
import argparse
import importlib.util
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from cmdp.training import batch as batch_lib
from cmdp.training import experiment, trainer


def matmul_peak(n: int = 0, dtype: str = "float32", repeats: int = 10) -> float:
  """FLOP/s of a jitted `dtype` [n, n] @ [n, n] matmul (best of `repeats`); n=0: 2048 on a
  CPU, 8192 on an accelerator (large enough to reach its peak)."""
  n = n or (2048 if jax.devices()[0].platform == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def model_flops(cfg, rows: int, length: int, head_positions: int, factor: int,
                shared: int = 0, group: int = 0, group_size: int = 1) -> float:
  """Model FLOPs of `rows` sequences of `length` tokens whose first `shared` are the same in
  every row and run once (`models.forward(shared_prefix=...)`) and whose first `group`
  (> shared) are the same in each group of `group_size` rows and run once per group
  (`group_prefix`): `factor` (6 training, 2 forward) x (the layers' matmul params x the
  tokens run + the vocabulary projection x the positions that get logits, `head_positions`
  per row) + attention (QK and AV over the context)."""
  d, f, n, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
  attn = d * cfg.head_dim * (cfg.num_heads * 2 + cfg.num_kv_heads * 2)
  group = max(group, shared) if group_size > 1 else shared
  groups = rows // group_size if group_size > 1 else rows
  tokens = rows * (length - group) + groups * (group - shared) + shared
  # Query-key pairs: each pass's queries against every key of its context (as computed).
  pairs = rows * (length - group) * length + groups * (group - shared) * group + shared ** 2
  return factor * (n * (attn + 3 * d * f) * tokens + d * v * rows * head_positions
                   + 2 * n * cfg.num_heads * cfg.head_dim * pairs)


def load_config(path: str, arg: str | None, sets: list[str]):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  for item in sets:
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == "True"
  config.calibrate_budget_quantile = 0.0
  return config


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--arg", default=None)
  p.add_argument("--set", action="append", default=[])
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--no_group_sharing", action="store_true",
                 help="Run every row's prompt on its own (the sampler's prefill and the "
                 "update's passes), for a with/without comparison.")
  args = p.parse_args()

  config = load_config(args.config, args.arg, args.set)
  exp = experiment.build(config)
  state, shardings = trainer.create_state(exp, exp.student.params)
  g = exp.hp.group_size
  step_config = exp.step_config
  if args.no_group_sharing:
    step_config = step_config.replace(group_prefix=0)
  train_step = exp.make_train_step(exp.hp, shardings, step_config)
  it = iter(range(10 ** 6))
  from cmdp import data  # pylint: disable=g-import-not-at-top
  prompts_it = data.PromptIterator(exp.train_examples, config.batch_size // g, seed=0)
  # Repeats each prompt inside, after its one prefill; without sharing, on the host.
  sampler = exp.sampler(group_size=1 if args.no_group_sharing else g)
  times = {k: [] for k in ("rollout", "reward", "teacher", "update")}
  gen_tokens, seq_tokens = [], []
  for step in range(args.steps + 1):
    examples = prompts_it.next_batch()
    group = [ex for ex in examples for _ in range(g)]
    prompts = exp.encode_prompts(examples)
    if args.no_group_sharing:
      prompts = exp.put_batch(tuple(np.repeat(x, g, axis=0) for x in prompts))
    else:
      prompts = exp.put_prompts(prompts)
    t0 = time.perf_counter()
    rollout = sampler(state.params, *prompts, jax.random.PRNGKey(next(it)))
    jax.block_until_ready(rollout)
    t1 = time.perf_counter()
    reward, _ = batch_lib.task_rewards(batch_lib.decode_responses(exp.tokenizer, rollout), group)
    batch = exp.shift_batch(rollout.tokens, rollout.attention_mask, rollout.response_mask,
                            rollout.logprobs)
    batch["task_reward"] = exp.put_batch(reward)
    t2 = time.perf_counter()
    # The teacher's forward alone (the update runs it again, microbatch by microbatch).
    jax.block_until_ready(exp.teacher_logits(batch["inputs"], batch["input_mask"]))
    t3 = time.perf_counter()
    state, metrics = train_step(state, exp.step_teacher_params, batch)
    jax.block_until_ready(metrics)
    t4 = time.perf_counter()
    if step == 0:
      print(f"compile + first step: rollout {t1 - t0:.1f}s, teacher {t3 - t2:.1f}s, "
            f"update {t4 - t3:.1f}s")
      continue
    for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      times[k].append(dt)
    gen_tokens.append(int(np.asarray(rollout.lengths).sum()))
    seq_tokens.append(int(np.prod(batch["inputs"].shape)))

  med = {k: float(np.median(v)) for k, v in times.items()}
  gen, seq = float(np.mean(gen_tokens)), float(np.mean(seq_tokens))
  scfg, tcfg = exp.student.config, exp.teacher.config
  rows, L = batch["inputs"].shape
  head = L - step_config.response_start  # positions that get logits
  # The student's training pass and the teacher's forward, per epoch: the work the step
  # needs (a prompt shared by a group counted once, with sharing on).
  shared = step_config.shared_prefix  # columns every row shares, run once
  share = dict(group=step_config.group_prefix, group_size=g)
  update_flops = (model_flops(scfg, rows, L, head, 6, shared, **share)
                  + model_flops(tcfg, rows, L, head, 2, shared, **share)) * config.ppo_epochs
  peak = matmul_peak(dtype=scfg.dtype)
  print(f"\nconfig {args.config}:{args.arg or ''}  batch {config.batch_size} x {L} tokens "
        f"(the first {shared} shared, the first {step_config.group_prefix} once per group "
        f"of {g}, logits over the last {head}), "
        f"student {scfg.num_layers} layers d={scfg.hidden_size}, teacher {tcfg.num_layers} "
        f"layers, devices {jax.device_count()} ({jax.devices()[0].platform})")
  print("| phase | median s | tokens/s |")
  print("| --- | --- | --- |")
  print(f"| student rollout | {med['rollout']:.3f} | {gen / med['rollout']:.0f} generated |")
  print(f"| reward (host) | {med['reward']:.3f} | {config.batch_size / med['reward']:.0f} seqs/s |")
  print(f"| teacher scoring (inside the update) | {med['teacher']:.3f} | "
        f"{seq / med['teacher']:.0f} |")
  print(f"| update (fwd+bwd+adam) | {med['update']:.3f} | {seq / med['update']:.0f} |")
  whole = sum(med.values()) - med["teacher"]
  print(f"| whole step | {whole:.3f} | {gen / whole:.0f} generated |")
  mfu = update_flops / med["update"] / peak
  print(f"\nupdate: {update_flops / med['update'] / 1e9:.1f} GFLOP/s of model FLOPs; "
        f"measured {scfg.dtype} matmul peak {peak / 1e9:.1f} GFLOP/s; MFU {100 * mfu:.1f}%")
  if "mismatch_k3" in metrics:
    print(f"sampler-trainer mismatch (last step): mean |log-prob diff| "
          f"{float(metrics['mismatch_abs_logprob']):.2e}, "
          f"k3 KL {float(metrics['mismatch_k3']):.2e}")
  print(f"peak memory: {peak_memory()}")


def peak_memory() -> str:
  """The accelerator's peak bytes in use where it reports them, and the process's RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
  device = (f"device {stats['peak_bytes_in_use'] / 2 ** 30:.2f} GiB, "
            if "peak_bytes_in_use" in stats else "")
  return f"{device}host RSS {rss:.2f} GiB"


if __name__ == "__main__":
  main()
