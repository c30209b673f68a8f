"""Each prompt group's prompt runs once per group (`models.forward(group_prefix=...)`, the
sampler's prefill, the train step's student and teacher passes): the same logits,
gradients, tokens, losses and metrics as every row run on its own, on one device and on
cpu:8 meshes (fsdp, data x fsdp, fsdp x tensor; a teacher on its own devices)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from cmdp import models, rollout, sharding
from cmdp.objectives import ObjectiveConfig, get_objective
from cmdp.training import batch as batch_lib
from cmdp.training import programs, trainer
from cmdp.training import step as step_lib

CFG = models.ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True,
                         tie_word_embeddings=True)
TEACHER = CFG.replace(num_layers=3, qk_norm=False, tie_word_embeddings=False)
G, GROUPS, P, N = 4, 4, 7, 6  # group size, prompts, prompt width, response width
B = G * GROUPS


def _rollout(seed=0, shared=0):
  """`[B, P + N]` sequences as the sampler writes them: each group's prompt (after
  `shared` columns common to every row, then left padding, `data.encode_prompts`'s
  layout), then each row's own response, right padded after its stop."""
  rng = np.random.default_rng(seed)
  common = rng.integers(1, CFG.vocab_size, shared)
  tokens, mask = np.zeros((B, P + N), np.int32), np.zeros((B, P + N), bool)
  for g in range(GROUPS):
    own = rng.integers(1, CFG.vocab_size, rng.integers(1, P - shared + 1))
    for r in range(g * G, (g + 1) * G):
      tokens[r, :shared] = common
      tokens[r, P - len(own):P] = own
      mask[r, :shared] = mask[r, P - len(own):P] = True
      n = int(rng.integers(1, N + 1))
      tokens[r, P:P + n] = rng.integers(1, CFG.vocab_size, n)
      mask[r, P:P + n] = True
  return tokens, mask


@pytest.fixture(scope="module")
def params():
  return jax.tree.map(lambda x: x * 5 if x.ndim >= 2 else x,
                      models.init_params(CFG, jax.random.key(3)))


@pytest.mark.parametrize("shared", [0, 3])
@pytest.mark.parametrize("logits_from", [0, P - 1, P + 2])
def test_forward_equals_every_row_on_its_own(params, shared, logits_from):
  tokens, mask = _rollout(1, shared)
  got = models.forward(CFG, params, tokens, mask, logits_from, shared_prefix=shared,
                       group_prefix=P, group_size=G)
  want = models.forward(CFG, params, tokens, mask, logits_from)
  assert got.shape == want.shape == (B, P + N - logits_from, CFG.vocab_size)
  real = mask[:, logits_from:]  # logits at padding are meaningless in both
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-4,
                             rtol=1e-5)


def test_gradient_equals_every_row_on_its_own(params):
  tokens, mask = _rollout(2, shared=2)
  weights = np.random.default_rng(4).normal(size=(B, N + 1, CFG.vocab_size)).astype(np.float32)

  def loss(p, **prefixes):
    logits = models.forward(CFG, p, tokens, mask, P - 1, **prefixes)
    return jnp.sum(jnp.where(mask[:, P - 1:, None], logits * weights, 0.0))

  got = jax.grad(loss)(params, shared_prefix=2, group_prefix=P, group_size=G)
  want = jax.grad(loss)(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-4 * float(jnp.abs(w).max()) + 1e-6)


def test_forward_refuses_impossible_groups(params):
  tokens, mask = _rollout()
  with pytest.raises(ValueError, match="group_size=3 must be >= 1 and divide the 16 rows"):
    models.forward(CFG, params, tokens, mask, group_prefix=P, group_size=3)
  with pytest.raises(ValueError, match="must leave at least one"):
    models.forward(CFG, params, tokens, mask, group_prefix=P + N, group_size=G)


MESHES = [None, dict(data=1, fsdp=8), dict(data=2, fsdp=4), dict(data=1, fsdp=4, tensor=2)]
MESH_IDS = ["one_device", "fsdp8", "data2_fsdp4", "fsdp4_tensor2"]
# (mesh, prompts): 2 prompts do not split over fsdp=8 where their 8 rows do, so each row is
# prefilled on its own device (`sampler.prefill_rows`); 8 prompts split, one a device.
SAMPLER_CASES = [
    pytest.param(None, 8, id="one_device"),
    pytest.param(MESHES[1], 2, id="fsdp8_2_prompts"),
    pytest.param(MESHES[1], 8, id="fsdp8_8_prompts"),
    pytest.param(MESHES[3], 8, id="fsdp4_tensor2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("axes, prompts", SAMPLER_CASES)
def test_sampler_prefills_each_prompt_once(params, axes, prompts):
  """`repeat=G` prefills each prompt once and copies its cache to its G rows: the rollout
  of the prompts repeated on the host (tokens bitwise, log-probs)."""
  tokens, mask = _rollout(3)
  tokens, mask = tokens[::G][:prompts, :P], mask[::G][:prompts, :P]
  kw = dict(max_new_tokens=N, temperature=1.0)
  mesh = sharding.make_mesh(**axes) if axes else None
  p = sharding.shard_params(params, mesh, CFG) if mesh else params
  want = rollout.make_sampler(CFG, mesh=mesh, **kw)(
      p, np.repeat(tokens, G, 0), np.repeat(mask, G, 0), jax.random.key(5))
  got = rollout.make_sampler(CFG, mesh=mesh, repeat=G, **kw)(p, tokens, mask,
                                                             jax.random.key(5))
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.response_mask, want.response_mask)
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)


def _batch():
  tokens, mask = _rollout(5, shared=2)
  rng = np.random.default_rng(6)
  action = mask & (np.arange(P + N)[None] >= P)
  logprobs = np.where(action, -rng.uniform(0.5, 3.0, action.shape), 0.0).astype(np.float32)
  batch = {k: np.asarray(v) for k, v in batch_lib.shift(tokens, mask, action, logprobs).items()}
  batch["task_reward"] = rng.integers(0, 2, B).astype(np.float32)
  return batch


def _step(mesh, group_prefix: int, teacher_mesh=None, objective="cmdp"):
  """One update (2 minibatches of 2 microbatches, TIS on) on `mesh`: metrics and params."""
  hp = ObjectiveConfig(group_size=G, budget=2.0, tis_cap=2.0)
  objective = get_objective(objective)
  optimizer = optax.sgd(0.3)
  params = jax.tree.map(lambda x: x * 5 if x.ndim >= 2 else x,
                        models.init_params(CFG, jax.random.key(0)))
  state = step_lib.init_state(params, optimizer, objective, hp, jax.random.key(2))
  shardings = trainer.state_shardings(
      types.SimpleNamespace(student_mesh=mesh, student=types.SimpleNamespace(config=CFG)),
      state)
  state = jax.device_put(state, shardings)
  teacher_at = teacher_mesh or mesh
  teacher = sharding.shard_params(models.init_params(TEACHER, jax.random.key(1)), teacher_at,
                                  TEACHER)
  config = step_lib.StepConfig(grad_accum_steps=2, ppo_minibatches=2, response_start=P - 1,
                               shared_prefix=2, group_prefix=group_prefix)
  step = programs.train_step(objective, hp, CFG, optimizer, config, mesh, shardings, TEACHER,
                             teacher_mesh)
  batch = jax.device_put(_batch(), NamedSharding(mesh, sharding.batch_spec()))
  state, metrics = step(state, teacher, batch)
  return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, state.params)


def _assert_same_update(got, want):
  (m_got, p_got), (m_want, p_want) = got, want
  assert set(m_got) == set(m_want)
  for k in m_want:
    np.testing.assert_allclose(m_got[k], m_want[k], rtol=1e-3, atol=1e-5, err_msg=k)
  assert float(m_want["grad_norm"]) > 0
  # float32 summation order differs (a group's prompt is one row, its gradient the sum of
  # its rows'): entries move by ~1e-4 of the largest, after two SGD steps of 0.3.
  for g, w in zip(jax.tree.leaves(p_got), jax.tree.leaves(p_want)):
    np.testing.assert_allclose(g, w, atol=5e-4 * np.abs(w).max())


@pytest.mark.slow
@pytest.mark.parametrize("axes", MESHES[2:], ids=MESH_IDS[2:])
def test_train_step_shares_prompts_on_meshes(axes):
  """Loss, every metric (per-row KL quantiles included) and the updated parameters of a
  cmdp update whose student and teacher run each group's prompt once, against the
  unshared step on the same mesh."""
  mesh = sharding.make_mesh(**axes)
  _assert_same_update(_step(mesh, P), _step(mesh, 0))


@pytest.mark.slow
def test_host_driven_step_shares_prompts_on_the_teachers_devices():
  """A teacher on devices of its own gets the group prefix too (its logits are handed over
  per microbatch)."""
  student, teacher = sharding.make_mesh(1, 4, 1, jax.devices()[:4]), sharding.make_mesh(
      1, 4, 1, jax.devices()[4:])
  _assert_same_update(_step(student, P, teacher), _step(student, 0, teacher))
