"""Each loss against the numpy reference on a tiny batch, plus the identities between them.

The student "model" is a table of fixed logits held in the params, so every value is
computable by hand / numpy (each row's first input names its row of the table, so a
microbatch of rows reads its own logits). B=4 rows in 2 groups of 2, L=4, V=5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp.objectives import LambdaState, ObjectiveConfig, get_objective

from . import reference as ref

B, L, V, G = 4, 4, 5, 2
MASK = np.array([[0, 1, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.float64)
AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_mean_token_mean")


def make_batch(seed=0):
  """(params, batch, numpy arrays): old log-probs within ±0.5 of the current ones."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, L, V)) * 1.5
  teacher = rng.normal(size=(B, L, V)) * 1.5
  targets = rng.integers(0, V, size=(B, L))
  logp = ref.token_logprobs(logits, targets)
  old = (logp + rng.uniform(-0.5, 0.5, size=(B, L))) * MASK
  ref_lp = (logp + rng.uniform(-0.3, 0.3, size=(B, L))) * MASK
  task_reward = np.array([1.0, 0.0, 0.0, 1.0])
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  inputs = np.concatenate([np.arange(B)[:, None], targets[:, :-1]], axis=1)
  batch = dict(inputs=jnp.asarray(inputs, jnp.int32), targets=jnp.asarray(targets, jnp.int32),
               input_mask=jnp.ones((B, L), bool), mask=f32(MASK), old_logprobs=f32(old),
               teacher_logits=f32(teacher), ref_logprobs=f32(ref_lp), task_reward=f32(task_reward),
               num_tokens=f32(MASK.sum()), num_sequences=f32(B))
  np_arrays = dict(logits=logits, teacher=teacher, targets=targets, logp=logp, old=old,
                   ref_lp=ref_lp, task_reward=task_reward)
  return {"logits": f32(logits)}, batch, np_arrays


def run(name, hp, params, batch, lam=0.0):
  """The objective's `(loss, metrics)` on the table logits of the batch's rows."""
  objective = get_objective(name)
  state = objective.init_state(hp)
  if name == "dual_lagrangian":
    state = LambdaState(lam=jnp.float32(lam), step=jnp.int32(0))
  logits = params["logits"][batch["inputs"][:, 0]]
  return objective.loss_fn(logits, batch.get("teacher_logits"), batch, hp, state)


def seq_sum(x):
  return (x * MASK).sum(-1)


def check_common_metrics(metrics, a, hp, costs):
  kl_tok = ref.kl(a["logits"], a["teacher"])
  np.testing.assert_allclose(metrics["task_reward"], a["task_reward"].mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["response_length"], MASK.sum(-1).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["entropy"], (ref.entropy(a["logits"]) * MASK).sum() /
                             MASK.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_token"], (kl_tok * MASK).sum() / MASK.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_seq"], seq_sum(kl_tok).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["constraint_value"], seq_sum(costs).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["constraint_satisfaction"],
                             (seq_sum(costs) <= hp.budget).mean(), rtol=1e-6)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("mode,normalize_std", [("loo", False), ("grpo", True), ("none", False)])
def test_grpo_matches_reference(aggregation, mode, normalize_std):
  params, batch, a = make_batch()
  hp = ObjectiveConfig(group_size=G, aggregation=aggregation, ref_kl_coef=0.3, budget=4.0,
                       advantage=mode, normalize_std=normalize_std)
  loss, metrics = run("grpo", hp, params, batch)
  rewards = ref.last_token_rewards(a["task_reward"], MASK)
  ret = ref.returns(rewards, MASK, 1.0)
  want, _ = ref.pg_loss(a["logp"], a["old"], MASK, ret, ref.first_token_values(ret, MASK), G,
                        mode, normalize_std, 0.2, aggregation, MASK.sum(), B)
  d = a["ref_lp"] - a["logp"]  # k3 of kl(student||ref): e^d - 1 - d
  want += 0.3 * ref.aggregate(np.exp(d) - 1 - d, MASK, aggregation, MASK.sum(), B)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  kl_tok = ref.kl(a["logits"], a["teacher"])
  check_common_metrics(metrics, a, hp, kl_tok)
  ratio = np.exp(a["logp"] - a["old"])
  np.testing.assert_allclose(metrics["ratio_mean"], (ratio * MASK).sum() / MASK.sum(), rtol=1e-5)


def test_grpo_default_advantages_are_leave_one_out_by_hand():
  # Rewards [1, 0 | 0, 1]: each row's baseline is the other row's reward: +1, -1, -1, +1.
  params, batch, a = make_batch()
  _, metrics = run("grpo", ObjectiveConfig(group_size=G), params, batch)
  adv = np.array([1, -1, -1, 1])[:, None] * np.ones((B, L))
  np.testing.assert_allclose(metrics["advantage_mean"], (adv * MASK).sum() / MASK.sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["advantage_abs_mean"], 1.0, rtol=1e-6)


def cmdp_reference(a, costs, hp, kappa, direct):
  """The cmdp loss in numpy: the PG surrogate on returns with the immediate exact term
  removed (reverse_kl) plus the exact / direct term, as docs/method.md writes it."""
  rewards, violated = ref.saute_rewards(a["task_reward"], costs, MASK, hp.budget, hp.penalty,
                                        hp.penalty_scale, hp.pay_reward_if_violated,
                                        hp.constraint, hp.penalty_units)
  ret = ref.returns(rewards, MASK, hp.gamma)
  weights = ret + (kappa * violated * costs if hp.cost == "reverse_kl" else 0.0)
  settled = None
  if hp.penalty == "terminal" and not hp.pay_reward_if_violated:
    # The state fixes the return to go once the flag is known from it: at the flag token
    # for reverse_kl (a cost of the state), from the next token for costs that read y_t.
    settled = np.zeros(MASK.shape, bool)
    for b, t in zip(*np.nonzero(violated)):
      settled[b, t] = hp.cost == "reverse_kl" or (t > 0 and violated[b, t - 1])
  want, scale = ref.pg_loss(a["logp"], a["old"], MASK, weights,
                            ref.first_token_values(ret, MASK), G, hp.advantage,
                            hp.normalize_std, 0.2, hp.aggregation, MASK.sum(), B, settled)
  factor = (G - 1) / G if hp.advantage == "grpo" else 1.0
  coef = kappa * violated
  if hp.boundary_width > 0 and hp.cost != "teacher_nll":  # the boundary term (method.md)
    coef = coef + ref.boundary_coefficients(
        a["task_reward"], costs, MASK, hp.budget, hp.boundary_width, hp.penalty,
        hp.penalty_scale, hp.pay_reward_if_violated, hp.constraint, hp.penalty_units)[0]
  want += factor * ref.aggregate(coef * direct / scale[:, None], MASK,
                                 hp.aggregation, MASK.sum(), B)
  return want, violated


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("penalty,units", [("scaled", "budget"), ("scaled", "nats"),
                                           ("constant_plus_scaled", "budget"),
                                           ("constant", "budget"), ("terminal", "budget")])
def test_cmdp_matches_reference(aggregation, penalty, units):
  params, batch, a = make_batch()
  costs = ref.kl(a["logits"], a["teacher"])
  budget = float(np.median(seq_sum(costs)))  # half the rows violate
  hp = ObjectiveConfig(group_size=G, aggregation=aggregation, budget=budget, penalty=penalty,
                       penalty_scale=1.5, penalty_units=units, advantage="grpo",
                       normalize_std=True)
  unit = budget if units == "budget" else 1.0  # the sum constraint's cost unit
  kappa = {"scaled": 1.5 / unit, "constant_plus_scaled": 1.0 / unit}.get(penalty, 0.0)
  loss, metrics = run("cmdp", hp, params, batch)
  want, violated = cmdp_reference(a, costs, hp, kappa, costs)
  assert 0 < violated.sum() < MASK.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)  # float32 sums near 0
  np.testing.assert_allclose(metrics["violation_fraction"], violated.sum() / MASK.sum(),
                             rtol=1e-6)
  check_common_metrics(metrics, a, hp, costs)


def test_cmdp_logratio_cost_adds_the_direct_term():
  """v_t depends on y_t through c_t, so kappa v_t grad log pi(y_t) is kept (not mean zero)."""
  params, batch, a = make_batch(1)
  costs = a["logp"] - ref.token_logprobs(a["teacher"], a["targets"])
  budget = float(np.median(seq_sum(costs)))
  hp = ObjectiveConfig(group_size=G, budget=budget, cost="logratio", gamma=0.9,
                       pay_reward_if_violated=True, penalty="scaled", penalty_scale=1.3,
                       penalty_units="nats")
  loss, _ = run("cmdp", hp, params, batch)
  want, violated = cmdp_reference(a, costs, hp, 1.3, a["logp"])
  assert 0 < violated.sum() < MASK.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # The gradient has the direct term: kappa v_t on d log pi(y_t) / d logits.
  no_direct = jax.grad(lambda p: run("cmdp", hp.replace(penalty="constant"), p, batch)[0])
  with_direct = jax.grad(lambda p: run("cmdp", hp, p, batch)[0])
  assert np.abs(with_direct(params)["logits"] - no_direct(params)["logits"]).max() > 1e-3


WORST = dict(cost="teacher_nll", constraint="prefix_mean", penalty="constant")


def test_worst_case_is_teacher_nll_prefix_mean_constant():
  params, batch, a = make_batch(2)
  costs = -ref.token_logprobs(a["teacher"], a["targets"])
  budget = float(np.median(costs[MASK > 0]))
  hp = ObjectiveConfig(group_size=G, budget=budget, penalty_scale=2.0, **WORST)
  loss, metrics = run("worst_case", hp, params, batch)
  want, violated = cmdp_reference(a, costs, hp, 0.0, costs)
  assert 0 < violated.sum() < MASK.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  prefix_max = [max(np.cumsum(costs[b][MASK[b] > 0]) / np.arange(1, MASK[b].sum() + 1))
                for b in range(B)]
  np.testing.assert_allclose(metrics["constraint_value"], np.mean(prefix_max), rtol=1e-5)


def test_worst_case_refuses_a_config_without_its_preset():
  with pytest.raises(ValueError, match=r"config.loss.cost='reverse_kl': objective 'worst_case'"):
    get_objective("worst_case").check_fields(ObjectiveConfig())
  get_objective("worst_case").check_fields(ObjectiveConfig(**WORST))


def test_minillm_matches_reference():
  params, batch, a = make_batch(3)
  hp = ObjectiveConfig(group_size=G, gamma=0.95)
  loss, _ = run("minillm", hp, params, batch)
  r = (ref.token_logprobs(a["teacher"], a["targets"]) - a["logp"]) * MASK
  ret = ref.returns(r, MASK, 0.95)
  want, scale = ref.pg_loss(a["logp"], a["old"], MASK, ret - r,
                            ref.first_token_values(ret, MASK), G, "loo", False, 0.2,
                            "sequence_mean", MASK.sum(), B)
  want += ref.aggregate(ref.kl(a["logits"], a["teacher"]) / scale[:, None], MASK,
                        "sequence_mean", MASK.sum(), B)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gkd_endpoints_are_forward_and_reverse_kl(beta):
  params, batch, a = make_batch(4)
  loss, _ = run("gkd", ObjectiveConfig(gkd_beta=beta, aggregation="token_mean"), params, batch)
  t, s = a["teacher"], a["logits"]
  if beta == 0.0:
    div = ref.kl(t, s)  # forward kl(teacher||student)
  elif beta == 1.0:
    div = ref.kl(s, t)  # reverse kl(student||teacher)
  else:  # JSD(0.5) / (0.5 * 0.5), mixture m = (teacher + student) / 2
    pt, ps = np.exp(ref.log_softmax(t)), np.exp(ref.log_softmax(s))
    m = 0.5 * pt + 0.5 * ps
    div = (0.5 * (pt * np.log(pt / m)).sum(-1) + 0.5 * (ps * np.log(ps / m)).sum(-1)) / 0.25
  np.testing.assert_allclose(loss, (div * MASK).sum() / MASK.sum(), rtol=1e-5)


def test_sft_is_masked_cross_entropy():
  params, batch, a = make_batch(5)
  batch = {k: v for k, v in batch.items() if k not in ("teacher_logits", "old_logprobs")}
  hp = ObjectiveConfig(aggregation="sequence_mean_token_mean")
  loss, metrics = run("sft", hp, params, batch)
  want = np.mean([-(a["logp"][b] * MASK[b]).sum() / MASK[b].sum() for b in range(B)])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert "kl_token" not in metrics


@pytest.mark.parametrize("name,lam", [("soft_lagrangian", 0.7), ("dual_lagrangian", 1.3)])
@pytest.mark.parametrize("constraint_", ["sum", "mean"])
def test_lagrangians_penalise_the_sequence_cost(name, lam, constraint_):
  """R - lambda C(y): per-token reward r_t - lambda w_t c_t, the same PG core, the exact
  KL gradient; `sum` drops the immediate term from the token's own return."""
  params, batch, a = make_batch(6)
  hp = ObjectiveConfig(group_size=G, soft_lambda=0.7, constraint=constraint_)
  loss, metrics = run(name, hp, params, batch, lam=lam)
  kl = ref.kl(a["logits"], a["teacher"])
  w = MASK if constraint_ == "sum" else MASK / MASK.sum(-1, keepdims=True)
  rewards = ref.last_token_rewards(a["task_reward"], MASK) - lam * w * kl
  ret = ref.returns(rewards, MASK, 1.0)
  g0 = ref.first_token_values(ret, MASK)
  weights = ret + lam * w * kl if constraint_ == "sum" else g0[:, None] * MASK
  want, _ = ref.pg_loss(a["logp"], a["old"], MASK, weights, g0, G, "loo", False, 0.2,
                        "sequence_mean", MASK.sum(), B)
  want += ref.aggregate(lam * w * kl, MASK, "sequence_mean", MASK.sum(), B)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["penalty"], lam * (w * kl).sum(-1).mean(), rtol=1e-5)


def test_soft_lagrangian_at_zero_equals_grpo():
  params, batch, _ = make_batch(7)
  hp = ObjectiveConfig(group_size=G, soft_lambda=0.0, entropy_coef=0.01)
  grad = lambda name: jax.value_and_grad(
      lambda p: run(name, hp, p, batch)[0])(params)
  (l_soft, g_soft), (l_grpo, g_grpo) = grad("soft_lagrangian"), grad("grpo")
  np.testing.assert_allclose(l_soft, l_grpo, rtol=1e-6)
  np.testing.assert_allclose(g_soft["logits"], g_grpo["logits"], rtol=1e-6, atol=1e-8)
  assert np.abs(g_grpo["logits"]).max() > 1e-3


# Every aggregation mode for cmdp; the other objectives each under one mode, in rotation
# (the aggregation code is shared), which keeps the test within its time budget.
_OTHERS = ("grpo", "worst_case", "soft_lagrangian", "dual_lagrangian", "gkd", "minillm", "sft")
ACCUM_CASES = ([("cmdp", agg) for agg in AGGREGATIONS] +
               [(n, AGGREGATIONS[i % 3]) for i, n in enumerate(_OTHERS)])


@pytest.mark.parametrize("name,aggregation", ACCUM_CASES)
def test_grad_accumulation_equals_full_batch_for_loss_gradient_and_metrics(name, aggregation):
  """Microbatch losses, gradients AND metrics (token-weighted ones included) sum to the
  full batch's."""
  params, batch, a = make_batch(8)
  budget = float(np.median(seq_sum(ref.kl(a["logits"], a["teacher"]))))
  hp = ObjectiveConfig(group_size=G, aggregation=aggregation, budget=budget,
                       entropy_coef=0.01, ref_kl_coef=0.1, normalize_std=True)
  if name == "worst_case":
    hp = hp.replace(**WORST, budget=3.0)

  def value(p, b):
    (loss, metrics), g = jax.value_and_grad(lambda q: run(name, hp, q, b, lam=0.5),
                                            has_aux=True)(p)
    return loss, metrics, g["logits"]

  full = value(params, batch)
  halves = [{k: (v[s] if np.ndim(v) and k not in ("num_tokens", "num_sequences") else v)
             for k, v in batch.items()} for s in (slice(0, 2), slice(2, 4))]
  parts = [value(params, h) for h in halves]
  np.testing.assert_allclose(parts[0][0] + parts[1][0], full[0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(parts[0][2] + parts[1][2], full[2], rtol=1e-5, atol=1e-7)
  assert np.abs(full[2]).max() > 1e-3
  for key, want in full[1].items():  # per-row metrics (seq/...) are the rows' values
    got = (np.concatenate([parts[0][1][key], parts[1][1][key]]) if key.startswith("seq/")
           else parts[0][1][key] + parts[1][1][key])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=key)


def test_missing_batch_field_is_named():
  params, batch, _ = make_batch()
  del batch["teacher_logits"]
  with pytest.raises(ValueError, match=r"'cmdp': the step lacks \['teacher_logits'\]"):
    run("cmdp", ObjectiveConfig(group_size=G), params, batch)
  params, batch, _ = make_batch()
  del batch["ref_logprobs"]
  with pytest.raises(ValueError, match="ref_kl_coef > 0 needs batch\\['ref_logprobs'\\]"):
    run("grpo", ObjectiveConfig(group_size=G, ref_kl_coef=0.1), params, batch)


@pytest.mark.parametrize("name", ["cmdp", "gkd", "dual_lagrangian", "soft_lagrangian"])
def test_time_chunked_vocabulary_terms_change_nothing(name):
  params, batch, _ = make_batch(seed=3)
  hp = ObjectiveConfig(budget=1.0, group_size=G)
  whole = jax.value_and_grad(lambda p: run(name, hp, p, batch, 0.5), has_aux=True)(params)
  chunked = jax.value_and_grad(
      lambda p: run(name, hp.replace(chunk_size=3), p, batch, 0.5), has_aux=True)(params)
  np.testing.assert_allclose(chunked[0][0], whole[0][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chunked[1]["logits"], whole[1]["logits"], rtol=1e-4, atol=1e-6)
