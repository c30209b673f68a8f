"""The estimators' expected gradient against brute force, for cmdp and minillm.

A tabular student over a V=3 vocabulary and 1- or 2-token episodes: `l0 [V]` are the
logits of the first token and `l1[a0] [V]` those of the second after `a0`; the teacher is
a fixed table of the same form. Enumerating all V^T responses y, the expected gradient of
the estimator, sum_y pi(y) grad loss(y) (ratio at 1, no baseline), must equal the brute-force
gradient -grad E_y[sum_t r~_t] of the expected modified reward, written out from method.md
(including the -n * KL_t(theta) penalty terms, whose gradient flows through the student
logits as well as through pi(y)).
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp.objectives import ObjectiveConfig, get_objective

V = 3


def tables(seed):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(rng.normal(size=s) * 1.2, jnp.float32)
  student = {"l0": f32(V), "l1": f32(V, V)}
  teacher = {"l0": f32(V), "l1": f32(V, V)}
  reward = jnp.asarray(rng.uniform(size=(V, V)), jnp.float32)
  return student, teacher, reward


def table_logits(tab, inputs):
  """`[B, T, V]` logits: position 0 from l0, position 1 from l1[previous token]."""
  first = jnp.broadcast_to(tab["l0"], (inputs.shape[0], 1, V))
  if inputs.shape[1] == 1:
    return first
  return jnp.concatenate([first, tab["l1"][inputs[:, 1]][:, None]], axis=1)


def apply_fn(params, inputs, input_mask):
  del input_mask
  return table_logits(params, inputs)


def responses(T):
  return np.array(list(itertools.product(range(V), repeat=T)), np.int32)  # [V^T, T]


def kl_rows(p, q):
  lp, lq = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
  return jnp.sum(jnp.exp(lp) * (lp - lq), -1)


def log_prob_of(tab, y):
  """log pi(y) under a table, and the per-position log-probs `[T]`."""
  steps = [jax.nn.log_softmax(tab["l0"])[y[0]]]
  if len(y) == 2:
    steps.append(jax.nn.log_softmax(tab["l1"][y[0]])[y[1]])
  return sum(steps), steps


def estimator_expected_grad(name, hp, student, teacher, reward, T):
  """sum_y pi(y) grad loss(y), each response its own one-row batch."""
  ys = responses(T)
  inputs = np.concatenate([np.zeros((len(ys), 1), np.int32), ys[:, :-1]], axis=1)
  old = jax.nn.log_softmax(table_logits(student, inputs))
  old = jnp.take_along_axis(old, ys[..., None], -1)[..., 0]
  r = reward[ys[:, 0], ys[:, -1]] if T == 2 else reward[ys[:, 0], 0]
  rows = dict(inputs=inputs, targets=ys, input_mask=np.ones(ys.shape, bool),
              mask=np.ones(ys.shape, np.float32), old_logprobs=old,
              teacher_logits=table_logits(teacher, inputs), task_reward=r)
  rows = jax.tree.map(lambda x: jnp.asarray(x)[:, None], rows)  # [V^T, 1, ...]
  fn = get_objective(name).loss_fn

  def one(row):
    batch = dict(row, num_tokens=jnp.float32(T), num_sequences=jnp.float32(1))
    return jax.grad(lambda p: fn(p, batch, apply_fn=apply_fn, hp=hp, lam=0.0)[0])(student)

  grads = jax.jit(jax.vmap(one))(rows)
  probs = jnp.exp(jnp.array([log_prob_of(student, y)[0] for y in ys]))
  np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
  return jax.tree.map(lambda g: jnp.tensordot(probs, g, axes=1), grads)


def expected_cmdp_reward(student, teacher, reward, T, budget, penalty, n):
  """E_y[sum_t r~_t]: Sauté 'sum' constraint, reverse-KL cost, reward only if not violated."""
  pen = {"scaled": lambda c: -n * c, "constant_plus_scaled": lambda c: -n - c}[penalty]
  kl0 = kl_rows(student["l0"], teacher["l0"])
  total = 0.0
  for y in responses(T):
    logp, _ = log_prob_of(student, y)
    v0 = jax.lax.stop_gradient(kl0) > budget
    if T == 1:
      ret = jnp.where(v0, pen(kl0), reward[y[0], 0])
    else:
      kl1 = kl_rows(student["l1"][y[0]], teacher["l1"][y[0]])
      v1 = v0 | (jax.lax.stop_gradient(kl0 + kl1) > budget)
      ret = jnp.where(v0, pen(kl0), 0.0) + jnp.where(v1, pen(kl1), reward[y[0], y[1]])
    total = total + jnp.exp(logp) * ret
  return total


@functools.partial(jax.jit, static_argnums=(4, 5))
def brute_force_grad(student, teacher, reward, budget, T, penalty):
  """-grad E_y[sum_t r~_t] with respect to the student table (n = 1.7)."""
  return jax.grad(lambda p: -expected_cmdp_reward(p, teacher, reward, T, budget, penalty,
                                                  1.7))(student)


def budgets(student, teacher, T):
  """Budgets (label, d): violated from the first token, and (T=2) only at the second."""
  kl0 = float(kl_rows(student["l0"], teacher["l0"]))
  out = [("first", 0.5 * kl0)]
  if T == 2:
    kl1 = np.asarray(kl_rows(student["l1"], teacher["l1"]))
    out.append(("second", kl0 + float(np.median(kl1))))
  else:
    out.append(("never", 2.0 * kl0))
  return out


@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("penalty", ["scaled", "constant_plus_scaled"])
def test_cmdp_estimator_is_unbiased(T, penalty):
  student, teacher, reward = tables(T)
  for label, budget in budgets(student, teacher, T):
    hp = ObjectiveConfig(group_size=1, advantage="none", aggregation="sequence_mean",
                         budget=budget, penalty=penalty, penalty_scale=1.7)
    got = estimator_expected_grad("cmdp", hp, student, teacher, reward, T)
    want = brute_force_grad(student, teacher, reward, budget, T, penalty)
    for k in got:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=f"{label} {k}")
    assert np.abs(want["l0"]).max() > 1e-2


@pytest.mark.parametrize("T", [1, 2])
def test_minillm_estimator_is_unbiased(T):
  student, teacher, reward = tables(10 + T)
  hp = ObjectiveConfig(group_size=1, advantage="none", aggregation="sequence_mean")
  got = estimator_expected_grad("minillm", hp, student, teacher, reward, T)

  def expected_logratio(p):  # E_y[sum_t log pi_T(y_t) - log pi_theta(y_t)] = -KL(seq)
    total = 0.0
    for y in responses(T):
      logp, steps = log_prob_of(p, y)
      _, t_steps = log_prob_of(teacher, y)
      total = total + jnp.exp(logp) * (sum(t_steps) - sum(steps))
    return total

  want = jax.jit(jax.grad(lambda p: -expected_logratio(p)))(student)
  for k in got:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
  assert np.abs(want["l0"]).max() > 1e-2
