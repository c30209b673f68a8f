"""Micro-benchmark: the Sauté reward scan and per-token kl(student||teacher) at a 150k vocab.

    python benchmarks/reward.py                       # CPU-sized defaults
    python benchmarks/reward.py --batch 8 --length 1024 --vocab 151936 --chunks 0,64,256 \
        --dtypes bfloat16

Prints, per configuration, the compiled temporary memory that XLA reports
(`memory_analysis().temp_size_in_bytes`) for the value and for value+gradient, and the
median wall time of the jitted call. Chunk size 0 means unchunked.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences


def timed(fn, *args, repeats: int = 5) -> float:
  """Median seconds per call of a compiled `fn` (after one warm-up call)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def temp_mib(fn, *args) -> float:
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return stats.temp_size_in_bytes / 2**20 if stats is not None else float("nan")


def bench_kl(batch: int, length: int, vocab: int, chunks: list[int], dtype: str) -> None:
  key_s, key_t = jax.random.split(jax.random.key(0))
  student = jax.random.normal(key_s, (batch, length, vocab), dtype)
  teacher = jax.random.normal(key_t, (batch, length, vocab), dtype)
  print(f"kl(student||teacher) on {dtype} logits [{batch}, {length}, {vocab}] "
        f"({student.nbytes / 2**20:.0f} MiB each), {jax.devices()[0].platform}")
  for chunk in chunks:
    size = chunk or None
    value = lambda s, t: divergences.kl(s, t, chunk_size=size)
    grad = jax.grad(lambda s, t: jnp.sum(divergences.kl(s, t, chunk_size=size)))
    print(f"  chunk_size={size}: temp value {temp_mib(value, student, teacher):8.1f} MiB, "
          f"value+grad {temp_mib(grad, student, teacher):8.1f} MiB, "
          f"value {timed(jax.jit(value), student, teacher) * 1e3:8.2f} ms, "
          f"grad {timed(jax.jit(grad), student, teacher) * 1e3:8.2f} ms")


def bench_reward(batch: int, length: int) -> None:
  key_c, key_m = jax.random.split(jax.random.key(1))
  costs = jax.random.uniform(key_c, (batch, length))
  lengths = jax.random.randint(key_m, (batch, 1), length // 4, length)
  mask = jnp.arange(length) < lengths
  task_reward = jnp.ones((batch,))
  for name in ("sum", "prefix_mean"):
    fn = jax.jit(lambda r, c, m, d: constraint.augmented_rewards(r, c, m, budget=d,
                                                                 constraint=name))
    start = time.perf_counter()
    jax.block_until_ready(fn(task_reward, costs, mask, 100.0))
    compile_s = time.perf_counter() - start
    run_s = timed(fn, task_reward, costs, mask, 100.0)
    print(f"augmented_rewards [{batch}, {length}] constraint={name}: "
          f"first call {compile_s * 1e3:.0f} ms, then {run_s * 1e3:.3f} ms")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=151_936)
  parser.add_argument("--chunks", default="0,16", help="comma-separated chunk sizes; 0 = none")
  parser.add_argument("--dtypes", default="bfloat16,float32", help="logits dtypes")
  parser.add_argument("--reward_batch", type=int, default=64)
  parser.add_argument("--reward_length", type=int, default=2048)
  args = parser.parse_args()
  bench_reward(args.reward_batch, args.reward_length)
  for dtype in args.dtypes.split(","):
    bench_kl(args.batch, args.length, args.vocab, [int(c) for c in args.chunks.split(",")], dtype)


if __name__ == "__main__":
  main()
