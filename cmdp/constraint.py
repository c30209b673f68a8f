"""Per-token costs, the constraint, and the Sauté constraint-augmented reward (method.md).

Shapes: `B` sequences of `T` positions; `mask [B, T]` is 1 on response tokens (it may have
leading prompt zeros and trailing pad zeros) and every per-token quantity is 0 off the mask.
Costs are per token; "sequence cost" is the constraint's per-sequence value.

The reward is Sauté RL without state augmentation: the remaining budget is a function of
the prefix, so it is tracked only inside this reward. It is one `lax.scan` over the tokens
of one sequence, `vmap`ped over the batch; masked tokens leave the scan state unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cmdp import divergences

COST_KINDS = ("reverse_kl", "logratio", "teacher_nll")
CONSTRAINTS = ("sum", "mean", "prefix_mean")
PENALTIES = ("terminal", "constant", "scaled", "constant_plus_scaled")
PENALTY_UNITS = ("budget", "nats")


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f"Unknown {name} {value!r}; valid values: {', '.join(valid)}.")


def token_costs(kind: str, student_logits: jax.Array, teacher_logits: jax.Array,
                targets: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
  """Per-token cost `c_t` of the student's response, float32 `[B, T]`.

  `logits[:, t]` (`[B, T, V]`, both models run on the student's own prefix) predicts
  `targets[:, t]` (`[B, T]` int). The teacher is under `stop_gradient`; gradients flow to
  the student logits.

  * `reverse_kl`: exact `kl(student||teacher)` over the vocabulary at each position.
  * `logratio`: `log pi_student(y_t) - log pi_teacher(y_t)` (one sample, can be negative).
  * `teacher_nll`: `-log pi_teacher(y_t)`.
  """
  _check_choice("cost kind", kind, COST_KINDS)
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if kind == "reverse_kl":
    return divergences.kl(student_logits, teacher_logits, chunk_size=chunk_size)
  teacher_lp = divergences.token_logprobs(teacher_logits, targets, chunk_size=chunk_size)
  if kind == "teacher_nll":
    return -teacher_lp
  student_lp = divergences.token_logprobs(student_logits, targets, chunk_size=chunk_size)
  return divergences.logratio(student_lp, teacher_lp)


def _check_budget(budget) -> None:
  """Raises if `budget` is concrete and not positive; traced budgets pass unchecked."""
  try:
    value = float(budget)
  except TypeError:  # includes jax.errors.ConcretizationTypeError under jit
    return
  if not value > 0:
    raise ValueError(f"budget must be > 0 (the constraint threshold d), got {value}.")


def _violations(spend: jax.Array, mask: jax.Array, z0: jax.Array, gamma: float) -> jax.Array:
  """Absorbing Sauté violation flags `v_t` for one sequence, bool `[T]` (off-mask False).

  The budget state is `z_{t+1} = (z_t - spend_t) / gamma`, `v_t = v_{t-1} or z_{t+1} < 0`.
  We carry `w_t = gamma^t z_t` and `gamma^t` instead of `z_t`: same sign, but no overflow
  of `gamma^-t` on long responses when `gamma < 1`. `t` counts response tokens only.
  """
  def step(carry, x):
    w, discount, violated = carry
    s, m = x
    new_w = w - discount * s
    new_violated = violated | (new_w < 0)
    carry = (jnp.where(m, new_w, w), jnp.where(m, discount * gamma, discount),
             jnp.where(m, new_violated, violated))
    return carry, new_violated & m
  init = (z0.astype(jnp.float32), jnp.ones((), jnp.float32), jnp.zeros((), bool))
  _, flags = jax.lax.scan(step, init, (spend, mask))
  return flags


def penalty_divisor(mask: jax.Array, budget, constraint: str = "sum",
                    penalty_units: str = "budget") -> jax.Array:
  """`D [B, 1]`, the unit a cost is divided by inside a penalty (method.md).

  `penalty_units="budget"`: the constraint's per-sequence limit, `d` for `sum` and `d T`
  (`T` the response length) for `mean` and `prefix_mean`, so a penalty `n c_t / D` summed
  over a response is `n` times its cost in budgets: overshooting by one budget costs `n`
  task rewards. `"nats"`: 1 (the penalty reads the cost in nats; the old scale
  `penalty_scale = n_nats` is `n = n_nats d` in budget units for `sum`).
  """
  _check_choice("penalty_units", penalty_units, PENALTY_UNITS)
  rows = mask.shape[:1] + (1,)
  if penalty_units == "nats":
    return jnp.ones(rows, jnp.float32)
  budget = jnp.asarray(budget, jnp.float32)
  if constraint == "sum":
    return jnp.broadcast_to(budget, rows)
  return budget * jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1, keepdims=True), 1.0)


def penalty_cost_coef(penalty: str, penalty_scale, divisor: jax.Array) -> jax.Array:
  """`kappa [B, 1]`: the weight of `c_t` in a violated token's penalty, `p_t = -(...) -
  kappa c_t` (`scaled`: `n / D`; `constant_plus_scaled`: `1 / D`; `constant`, `terminal`:
  0). It is also the weight of the exact cost gradient (`cmdp.objectives`)."""
  _check_choice("penalty", penalty, PENALTIES)
  n = jnp.asarray(penalty_scale, jnp.float32)
  return {"scaled": n / divisor, "constant_plus_scaled": 1.0 / divisor}.get(
      penalty, jnp.zeros_like(divisor))


def violation_flags(costs: jax.Array, mask: jax.Array, budget, constraint: str = "sum",
                    cost_discount: float = 1.0) -> jax.Array:
  """The absorbing Sauté flags `v_t` of `augmented_rewards`, bool `[B, T]` (off-mask False)."""
  _check_choice("constraint", constraint, CONSTRAINTS)
  costs = costs.astype(jnp.float32)
  mask = mask.astype(bool)
  budget = jnp.asarray(budget, jnp.float32)
  if constraint == "prefix_mean":
    spend, z0 = costs / budget - 1.0, jnp.zeros(mask.shape[:1])
  else:
    limit = budget * jnp.sum(mask, axis=-1) if constraint == "mean" else jnp.full(
        mask.shape[:1], budget)
    spend, z0 = costs / limit[:, None], jnp.ones(mask.shape[:1])
  return jax.vmap(_violations, in_axes=(0, 0, 0, None))(spend, mask, z0, cost_discount)


def augmented_rewards(task_reward: jax.Array, costs: jax.Array, mask: jax.Array, *,
                      budget, constraint: str = "sum", penalty: str = "terminal",
                      penalty_scale: float = 1.0, penalty_units: str = "budget",
                      cost_discount: float = 1.0,
                      pay_reward_if_violated: bool = False) -> tuple[jax.Array, jax.Array]:
  """The constraint-augmented (Sauté) per-token reward `r~_t = (1 - v_t) r_t + v_t p_t`.

  `r_t` is `task_reward` at the last response token (last position where `mask` is 1) and
  0 before it. The budget state is `z_0 = 1`, `z_{t+1} = (z_t - c_t / d) / gamma_c`, and
  `v_t = 1[z_{t+1} < 0]` is absorbing (once violated, violated for the rest of the
  response). By constraint (`d = budget`, `gamma_c = cost_discount`, `t` from 0 at the first
  response token; with `gamma_c = 1` these are exactly the constraints of method.md):

  * `sum`: the test above, i.e. `sum_{k<=t} gamma_c^k c_k > d`.
  * `mean`: `(1/T) sum c <= d` with `T` the response length, known after the rollout, so
    the test above with budget `d * T` (`sum_{k<=t} gamma_c^k c_k > d T`).
  * `prefix_mean`: violated from the first `t` where the running mean exceeds `d`. The
    state starts at `z_0 = 0` and spends `c_t / d - 1` per token, i.e. violated when
    `sum_{k<=t} gamma_c^k c_k > d sum_{k<=t} gamma_c^k` (a discounted running mean).

  Penalty `p_t` on violated tokens, `n = penalty_scale`, `D` = `penalty_divisor` (the
  per-sequence budget in `budget` units, 1 in `nats`):

  * `terminal` (default): `-n` once, at the first violated token (Sauté's constant unsafe
    reward, paid when the budget runs out);
  * `constant`: `-n` on every violated token;
  * `scaled`: `-n c_t / D`;
  * `constant_plus_scaled`: `-n - c_t / D`.

  With `pay_reward_if_violated`, `r_t` is paid at the last token even when violated (on
  top of `p_t`).

  Args:
    task_reward: `[B]` sequence reward `R(x, y)`.
    costs: `[B, T]` per-token costs `c_t`; values off the mask are ignored.
    mask: `[B, T]` 1 (or True) on response tokens.
    budget: the threshold `d > 0`; a Python number or a (possibly traced) scalar.
    constraint, penalty, penalty_units: static switches, see above.
    penalty_scale: `n`.
    cost_discount: `gamma_c` in (0, 1].
    pay_reward_if_violated: static bool.

  Returns:
    rewards: float32 `[B, T]`, 0 off the mask.
    violated: bool `[B, T]`, the absorbing flag `v_t`, False off the mask.
  """
  _check_choice("constraint", constraint, CONSTRAINTS)
  _check_choice("penalty", penalty, PENALTIES)
  _check_budget(budget)
  if not 0 < cost_discount <= 1:
    raise ValueError(f"cost_discount (gamma_c) must be in (0, 1], got {cost_discount}.")
  costs = costs.astype(jnp.float32)
  mask = mask.astype(bool)
  n = jnp.asarray(penalty_scale, jnp.float32)

  positions = jnp.arange(mask.shape[-1])
  last = jnp.max(jnp.where(mask, positions, -1), axis=-1, keepdims=True)
  task = jnp.where(positions == last, task_reward.astype(jnp.float32)[:, None], 0.0)
  violated = violation_flags(costs, mask, budget, constraint, cost_discount)

  kappa = penalty_cost_coef(penalty, n, penalty_divisor(mask, budget, constraint,
                                                        penalty_units))
  if penalty == "terminal":  # the first violated token only
    first = violated & ~jnp.pad(violated[:, :-1], ((0, 0), (1, 0)))
    pen = jnp.where(first, -n, 0.0)
  else:
    pen = jnp.where(violated, -(0.0 if penalty == "scaled" else n) - kappa * costs, 0.0)
  kept = task if pay_reward_if_violated else jnp.where(violated, 0.0, task)
  rewards = jnp.where(mask, kept + pen, 0.0)
  return rewards, violated


def reward_is_causal(constraint: str, penalty: str = "terminal",
                     penalty_units: str = "budget") -> bool:
  """Whether `augmented_rewards`' `r~_t` reads the response only up to token t.

  `mean`'s flag reads the final length `T`; so does the cost divisor `d T` of a scaled
  penalty in budget units under `prefix_mean`. The estimator then weighs every token by
  the whole return (`cmdp.objectives.policy_gradient`)."""
  if constraint == "sum":
    return True
  if constraint == "mean":
    return False
  reads_length = penalty in ("scaled", "constant_plus_scaled") and penalty_units == "budget"
  return not reads_length


def _discounts(mask: jax.Array, cost_discount: float) -> jax.Array:
  """`gamma_c^k` at the k-th response token (k from 0), 0 off the mask, float32 `[B, T]`."""
  k = jnp.cumsum(mask, axis=-1) - 1
  return jnp.where(mask, jnp.asarray(cost_discount, jnp.float32) ** jnp.maximum(k, 0), 0.0)


def sequence_weights(costs: jax.Array, mask: jax.Array, constraint: str = "sum",
                     cost_discount: float = 1.0) -> jax.Array:
  """Weights `w_t` with `sequence_cost = sum_t w_t c_t`, float32 `[B, T]` (0 off the mask).

  `sum`: `w_t = gamma_c^t`; `mean`: `gamma_c^t / T`; `prefix_mean`: `gamma_c^t / sum_{k<=t*}
  gamma_c^k` for `t <= t*` and 0 after, where `t*` is the prefix whose (discounted) mean is
  the largest (the first one on ties). The weights are constants of the sampled response
  (the Lagrangian baselines put `lambda * w_t` on each token's cost, `cmdp.objectives`);
  `costs` only locates `t*`.
  """
  _check_choice("constraint", constraint, CONSTRAINTS)
  mask = mask.astype(bool)
  disc = _discounts(mask, cost_discount)
  if constraint == "sum":
    return disc
  if constraint == "mean":
    return disc / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1)
  norm = jnp.cumsum(disc, axis=-1)
  prefix = jnp.cumsum(disc * jnp.where(mask, costs.astype(jnp.float32), 0.0), axis=-1)
  prefix = jnp.where(mask, prefix / jnp.maximum(norm, 1e-30), -jnp.inf)
  t_star = jnp.argmax(prefix, axis=-1)[:, None]
  positions = jnp.arange(mask.shape[-1])
  norm_star = jnp.take_along_axis(norm, t_star, axis=-1)
  return jnp.where(positions <= t_star, disc / jnp.maximum(norm_star, 1e-30), 0.0)


def _running_statistic(costs: jax.Array, mask: jax.Array, constraint: str,
                       cost_discount: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(m, disc, norm)`, float32 `[B, T]`: the statistic the Sauté flag compares with `d`
  after each token, `m_t = sum_{k<=t} gamma_c^k c_k / N_t` (`N_t`: 1 for `sum`, `T` for
  `mean`, `sum_{k<=t} gamma_c^k` for `prefix_mean`; `-inf` off the mask), the discounts
  and `N_t`."""
  _check_choice("constraint", constraint, CONSTRAINTS)
  mask = mask.astype(bool)
  disc = _discounts(mask, cost_discount)
  if constraint == "sum":
    norm = jnp.ones_like(disc)
  elif constraint == "mean":
    norm = jnp.broadcast_to(jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1),
                            disc.shape).astype(jnp.float32)
  else:
    norm = jnp.maximum(jnp.cumsum(disc, axis=-1), 1e-30)
  running = jnp.cumsum(disc * jnp.where(mask, costs.astype(jnp.float32), 0.0), axis=-1)
  return jnp.where(mask, running / norm, -jnp.inf), disc, norm


def running_peak(costs: jax.Array, mask: jax.Array, constraint: str = "sum",
                 cost_discount: float = 1.0) -> jax.Array:
  """`M_t = max_{k<=t} m_k` `[B, T]` (`-inf` before the response): the flag `v_t` of
  `augmented_rewards` is `M_t > d`, and the last token's `M` is `sequence_cost` whenever
  the flag and the constraint agree (always for `prefix_mean`; for `sum` and `mean` when
  the costs are >= 0, e.g. reverse_kl and teacher_nll; a negative logratio cost can
  spend the budget and earn it back, and the flag stays set)."""
  m, _, _ = _running_statistic(costs, mask, constraint, cost_discount)
  return jax.lax.cummax(m, axis=m.ndim - 1)


def peak_weights(coef: jax.Array, costs: jax.Array, mask: jax.Array, constraint: str = "sum",
                 cost_discount: float = 1.0) -> jax.Array:
  """`sum_t coef_t dM_t / dc_k` `[B, T]` (0 off the mask), `M_t` of `running_peak`.

  `M_t = m_j` at the first `j <= t` where the running statistic peaks, and `dm_j / dc_k =
  gamma_c^k / N_j` for `k <= j`: each token's weight is a reverse cumulative sum of the
  coefficients moved onto their peaks. With `coef` 1 at the last token only this is
  `sequence_weights` (prefix_mean, or costs >= 0).
  """
  m, disc, norm = _running_statistic(costs, mask, constraint, cost_discount)
  mask = mask.astype(bool)
  peak = jax.lax.cummax(m, axis=1)
  before = jnp.pad(peak[:, :-1], ((0, 0), (1, 0)), constant_values=-jnp.inf)
  positions = jnp.broadcast_to(jnp.arange(m.shape[-1]), m.shape)
  at = jax.lax.cummax(jnp.where(mask & (m > before), positions, 0), axis=1)
  moved = jnp.where(mask, coef.astype(jnp.float32), 0.0) / jnp.take_along_axis(norm, at, axis=1)
  on_peaks = jax.vmap(lambda x, j: jnp.zeros_like(x).at[j].add(x))(moved, at)
  return jnp.where(mask, disc * jnp.flip(jnp.cumsum(jnp.flip(on_peaks, -1), -1), -1), 0.0)


def sequence_cost(costs: jax.Array, mask: jax.Array, constraint: str = "sum",
                  cost_discount: float = 1.0) -> jax.Array:
  """The constraint's per-sequence value `C(y)`, float32 `[B]` (0 for an empty response).

  With `gamma_c = cost_discount` and `t` counting response tokens from 0:
  `sum`: `sum_t gamma_c^t c_t`; `mean`: `(1/T) sum_t gamma_c^t c_t`; `prefix_mean`:
  `max_t sum_{k<=t} gamma_c^k c_k / sum_{k<=t} gamma_c^k`. `C(y) <= d` exactly when the
  Sauté flag of `augmented_rewards` never fires on `y` (tested), so calibration,
  training metrics and evaluation read the constraint the reward enforces.
  """
  w = sequence_weights(costs, mask, constraint, cost_discount)
  return jnp.sum(w * jnp.where(mask.astype(bool), costs.astype(jnp.float32), 0.0), axis=-1)


def constraint_satisfied(costs: jax.Array, mask: jax.Array, budget, constraint: str = "sum",
                         cost_discount: float = 1.0) -> jax.Array:
  """bool `[B]`: `sequence_cost(costs, mask, constraint, cost_discount) <= budget`."""
  return sequence_cost(costs, mask, constraint, cost_discount) <= budget


def discounted_returns(rewards: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
  """Returns `G_t = sum_{k>=t} gamma^(k-t) r_k` over response tokens, float32 `[B, T]`.

  A reverse `lax.scan` per sequence, `vmap`ped over the batch. Exponents count response
  tokens only: masked positions contribute nothing, get `G = 0`, and pass the running
  return through unchanged, so pad inside a response does not break the discount chain.
  """
  def one(r, m):
    def step(g, x):
      r_t, m_t = x
      new_g = r_t + gamma * g
      return jnp.where(m_t, new_g, g), jnp.where(m_t, new_g, 0.0)
    _, out = jax.lax.scan(step, jnp.zeros((), jnp.float32), (r, m), reverse=True)
    return out
  return jax.vmap(one)(rewards.astype(jnp.float32), mask.astype(bool))


def calibrate_budget(sequence_costs, quantile: float) -> float:
  """Budget `d` as the `quantile` of the initial student's sequence costs `[N]`.

  With `quantile = q`, a fraction of about `1 - q` of those samples violates `d` (e.g.
  0.5: half). Linear interpolation between order statistics (`numpy.quantile`).
  """
  if not 0 < quantile < 1:
    raise ValueError(f"quantile must be in (0, 1), got {quantile}.")
  costs = np.asarray(sequence_costs, np.float64).reshape(-1)
  if costs.size == 0 or not np.all(np.isfinite(costs)):
    raise ValueError("sequence_costs must be a non-empty array of finite per-sequence costs.")
  return float(np.quantile(costs, quantile))
