"""`cmdp.plan.flops`: the matmul FLOP count against XLA's cost analysis."""
import functools

import jax
import pytest

from cmdp import models
from cmdp.plan import flops


def test_matmul_flop_count_matches_xla_on_one_layer():
  """`cmdp.plan.flops` against XLA's cost analysis of the forward (one CPU device): a
  layer (one layer's program minus no layer's) and the head; XLA adds the elementwise
  work (norms, softmax, SwiGLU), a few percent at this width."""
  cfg = models.ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=512,
                           num_layers=1, num_heads=4, num_kv_heads=2, head_dim=64)
  rows, length, window = 2, 64, 16

  def xla(c):
    params = jax.eval_shape(functools.partial(models.init_params, c), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((rows, length), jax.numpy.int32)
    fn = jax.jit(lambda p, x: models.forward(c, p, x, None, length - window))
    return fn.lower(params, tokens).compile().cost_analysis()["flops"]
  none, one = xla(cfg.replace(num_layers=0)), xla(cfg)
  assert 1.0 <= (one - none) / (rows * length * flops.layers(cfg, length)) < 1.06
  assert 1.0 <= none / (rows * window * flops.head(cfg)) < 1.06
  assert flops.forward(cfg, rows, length, window) == pytest.approx(
      rows * (length * flops.layers(cfg, length) + window * flops.head(cfg)))


def test_matmul_flop_count_of_a_group_shared_prompt_matches_xla():
  """`flops.forward(group=Q, group_size=G)`: each group's Q prompt columns once (attending
  over Q), every row's own columns over the whole length, the window's first position's
  logits once per group; against XLA's count of `models.forward(group_prefix=Q)`."""
  cfg = models.ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=512,
                           num_layers=1, num_heads=4, num_kv_heads=2, head_dim=64)
  rows, length, window, group, g = 8, 64, 25, 40, 4  # the window starts at column 39

  def xla(c):
    params = jax.eval_shape(functools.partial(models.init_params, c), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((rows, length), jax.numpy.int32)
    fn = jax.jit(lambda p, x: models.forward(c, p, x, None, length - window, group_prefix=group,
                                             group_size=g))
    return fn.lower(params, tokens).compile().cost_analysis()["flops"]
  none, one = xla(cfg.replace(num_layers=0)), xla(cfg)
  groups = rows // g
  layers = groups * group * flops.layers(cfg, group) + rows * (length - group) * flops.layers(
      cfg, length)
  assert 1.0 <= (one - none) / layers < 1.06
  assert 1.0 <= none / ((groups * 1 + rows * (window - 1)) * flops.head(cfg)) < 1.06
  assert flops.forward(cfg, rows, length, window, group, g) == pytest.approx(
      layers + (groups + rows * (window - 1)) * flops.head(cfg))
  assert flops.forward(cfg, rows, length, window, group, g) < flops.forward(
      cfg, rows, length, window)

