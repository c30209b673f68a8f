"""Cost of the cmdp objective against soft_lagrangian at the same shapes (a training step's
value_and_grad with a small real decoder), and of each objective alone.

    python benchmarks/objectives.py                  # B=16, L=256, V=4096, 2 layers, d=256
    python benchmarks/objectives.py --reps 50 --objectives cmdp,soft_lagrangian,grpo

Prints ms per jitted value_and_grad (median over interleaved repetitions) and the
overhead of each objective over the reference (soft_lagrangian). The target from the
spec: the augmented reward and its returns add under 3% to a step.
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from cmdp import constraint, divergences, models
from cmdp.objectives import ObjectiveConfig, get_objective


def make_batch(rng, batch, length, vocab, prompt_len, group_size):
  """A batch of the objectives' contract with random tokens and responses of random length."""
  k = jax.random.split(rng, 5)
  tokens = jax.random.randint(k[0], (batch, length + 1), 0, vocab)
  lengths = jax.random.randint(k[1], (batch,), (length - prompt_len) // 2,
                               length - prompt_len + 1)
  pos = jnp.arange(length)[None]
  mask = ((pos >= prompt_len - 1) & (pos < prompt_len - 1 + lengths[:, None])).astype(jnp.float32)
  return dict(
      inputs=tokens[:, :-1].astype(jnp.int32), targets=tokens[:, 1:].astype(jnp.int32),
      input_mask=jnp.ones((batch, length), bool), mask=mask,
      old_logprobs=-jnp.log(vocab) * mask + 0.01 * jax.random.normal(k[2], mask.shape) * mask,
      teacher_logits=2.0 * jax.random.normal(k[3], (batch, length, vocab), jnp.float32),
      task_reward=jax.random.bernoulli(k[4], 0.5, (batch,)).astype(jnp.float32),
      num_tokens=jnp.maximum(mask.sum(), 1.0), num_sequences=jnp.float32(batch))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--vocab", type=int, default=4096)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--width", type=int, default=256,
                 help="hidden size: a multiple of the head size, 64 (or below 64: one head)")
  p.add_argument("--reps", type=int, default=20)
  p.add_argument("--objectives", default="cmdp,soft_lagrangian")
  p.add_argument("--reference", default="soft_lagrangian")
  args = p.parse_args()
  head_dim = min(64, args.width)
  if args.width % head_dim:
    p.error(f"--width={args.width} must be a multiple of 64 (the head size) or below 64.")

  heads = args.width // head_dim
  cfg = models.ModelConfig(vocab_size=args.vocab, hidden_size=args.width,
                           intermediate_size=4 * args.width, num_layers=args.layers,
                           num_heads=heads, num_kv_heads=heads, head_dim=head_dim)
  params = models.init_params(cfg, jax.random.PRNGKey(0))
  batch = make_batch(jax.random.PRNGKey(1), args.batch, args.length, args.vocab,
                     prompt_len=args.length // 4, group_size=4)
  apply_fn = functools.partial(models.forward, cfg)
  seq_kl = jax.jit(lambda prm, b: constraint.sequence_cost(divergences.kl(
      apply_fn(prm, b["inputs"], b["input_mask"]), b["teacher_logits"]), b["mask"]))
  # Budget at the median sequence kl(student||teacher), so about half the rows violate.
  hp = ObjectiveConfig(group_size=4, budget=float(np.median(seq_kl(params, batch))))

  steps = {}
  for name in args.objectives.split(","):
    objective = get_objective(name)
    state = objective.init_state(hp)

    def loss(prm, b, objective=objective, state=state):
      logits = apply_fn(prm, b["inputs"], b["input_mask"])
      return objective.loss_fn(logits, b["teacher_logits"], b, hp, state)
    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    t0 = time.perf_counter()
    (loss, metrics), grads = fn(params, batch)
    jax.block_until_ready(grads)
    print(f"{name}: compile+first {time.perf_counter() - t0:.1f}s loss {float(loss):.4f} "
          f"violation_fraction {float(metrics.get('violation_fraction', np.nan)):.2f}")
    steps[name] = fn

  times = {name: [] for name in steps}
  for _ in range(args.reps):  # interleaved, so load changes hit every objective alike
    for name, fn in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params, batch))
      times[name].append(time.perf_counter() - t0)

  # The reward path alone (Sauté flags + augmented rewards + returns), at the same shapes:
  # a low-noise figure for what cmdp adds on top of the shared work.
  reward_path = jax.jit(lambda b, c: constraint.discounted_returns(constraint.augmented_rewards(
      b["task_reward"], c, b["mask"], budget=hp.budget)[0], b["mask"], hp.gamma))
  cost = jnp.abs(batch["old_logprobs"])
  jax.block_until_ready(reward_path(batch, cost))
  t0 = time.perf_counter()
  for _ in range(200):
    jax.block_until_ready(reward_path(batch, cost))
  reward_ms = (time.perf_counter() - t0) / 200 * 1e3

  tokens = args.batch * args.length
  print(f"\nB={args.batch} L={args.length} V={args.vocab} layers={args.layers} "
        f"d={args.width}, {args.reps} reps, device {jax.devices()[0].platform}")
  ref = np.median(times[args.reference]) if args.reference in times else None
  for name, ts in times.items():
    med = np.median(ts)
    line = (f"{name:18s} {1e3 * med:9.2f} ms/step (min {1e3 * min(ts):.2f}) "
            f"{tokens / med:9.0f} tokens/s")
    if ref is not None:
      line += f"  overhead vs {args.reference}: {100 * (med / ref - 1):+.1f}%"
    print(line)
  if ref is not None:
    print(f"augmented reward + returns alone: {reward_ms:.3f} ms = "
          f"{100 * reward_ms / (1e3 * ref):.3f}% of a {args.reference} step")


if __name__ == "__main__":
  main()
