"""The optax optimiser and learning-rate schedule named by `config.optimizer`."""
from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then constant, cosine or linear decay to 0."""
  peak, warm = opt.learning_rate, opt.warmup_steps
  decay_steps = max(num_steps - warm, 1)
  if opt.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif opt.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps)
  else:
    after = optax.linear_schedule(peak, 0.0, decay_steps)
  if warm <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """Gradient clipping (global norm) followed by AdamW / Adam / SGD on the schedule."""
  lr = learning_rate_schedule(opt, num_steps)
  if opt.name == "adamw":
    core = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
  elif opt.name == "adam":
    core = optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  else:
    core = optax.sgd(lr)
  chain = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm > 0 else []
  return optax.chain(*chain, core)
