"""The step's batch is built on the devices: the sampler repeats each prompt group_size
times inside its program and one compiled program shifts sequences into the step's fields;
the batches equal a numpy reference of the host repeat and shift (bitwise)."""
import dataclasses

import jax
import numpy as np
import pytest

from cmdp import data
from cmdp.models.transformer import prefix_levels
from cmdp.training import batch as batch_lib
from cmdp.training import experiment, trainer
from tests.training.tiny import tiny_config

MESHES = {
    # 4 prompts over 8 row shards: the prompts are replicated, the 8 rows split.
    "replicated_prompts": {},
    # 4 prompts over 2 row shards; the teacher on the other 4 devices.
    "sharded_prompts_teacher_apart": {"mesh.teacher_disjoint": True, "mesh.data": 2,
                                      "mesh.tensor": 2},
}


@pytest.fixture(scope="module", params=sorted(MESHES))
def setup(request):
  mesh = MESHES[request.param]
  exp = experiment.build(tiny_config(**mesh))
  state, _ = trainer.create_state(exp, exp.student.params)
  return exp, state.params, mesh


def numpy_shift(tokens, attention_mask, action_mask, logprobs=None) -> dict:
  return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
          "input_mask": attention_mask[:, :-1].astype(bool),
          "mask": action_mask[:, 1:].astype(np.float32),
          "old_logprobs": (np.zeros(action_mask[:, 1:].shape, np.float32) if logprobs is None
                           else logprobs[:, 1:].astype(np.float32))}


def host_repeated_rollout(exp, who, params, examples, rng):
  """The rollout as sampled before: prompts repeated on the host, a sampler of B rows."""
  prompts = [np.repeat(x, exp.hp.group_size, axis=0) for x in exp.encode_prompts(examples)]
  mesh = exp.student_mesh if who == "student" else exp.teacher_mesh
  return jax.device_get(exp.sampler(who)(params, *exp.put_batch(prompts, mesh), rng))


def assert_equal(exp, batch, want):
  assert sorted(batch) == sorted([*want, "task_reward"])  # no teacher logits
  for key, value in want.items():
    got = batch[key]
    assert got.dtype == value.dtype and got.shape == value.shape, key
    if key == "old_logprobs":  # each prompt prefilled once for its group: float32 rounding
      np.testing.assert_allclose(np.asarray(got), value, atol=1e-5, err_msg=key)
    else:
      np.testing.assert_array_equal(np.asarray(got), value, err_msg=key)
    assert got.sharding.is_equivalent_to(exp.batch_sharding(), got.ndim), key


def test_student_rollouts(setup):
  exp, params, _ = setup
  examples, rng = exp.train_examples[:4], jax.random.PRNGKey(3)
  batch, host = trainer.make_batch(exp, params, examples, rng, True)
  old = host_repeated_rollout(exp, "student", params, examples, rng)
  assert_equal(exp, batch, numpy_shift(old.tokens, old.attention_mask, old.response_mask,
                                       old.logprobs))
  assert host["new_tokens"] == old.lengths.sum()


@pytest.mark.parametrize("setup", ["sharded_prompts_teacher_apart"], indirect=True)
def test_teacher_samples_and_reference_sequences(setup):
  """Teacher samples move from the teacher's devices to the student's (no log-probs);
  reference sequences go from the host to the shift program."""
  exp, params, mesh = setup
  examples, rng = exp.train_examples[:4], jax.random.PRNGKey(4)
  teacher = dataclasses.replace(
      exp, config=tiny_config(objective="sft", **{"rollout.sft_source": "teacher"}, **mesh))
  batch, _ = trainer.make_batch(teacher, params, examples, rng, False)
  old = host_repeated_rollout(exp, "teacher", exp.teacher.params, examples, rng)
  assert_equal(exp, batch, numpy_shift(old.tokens, old.attention_mask, old.response_mask))

  reference = dataclasses.replace(exp, config=tiny_config(objective="sft", **mesh))
  batch, _ = trainer.make_batch(reference, params, examples, rng, False)
  config = reference.config
  seqs = [data.encode_sft(exp.tokenizer, exp.prompt_text(ex.question),
                          ex.solution or f"#### {ex.answer}", config.data.sft_max_len)
          for ex in examples for _ in range(config.rollout.group_size)]
  assert_equal(exp, batch, numpy_shift(*(np.stack(x) for x in zip(*seqs))))


def test_prompts_are_checked_on_the_host():
  tokens, mask = np.ones((2, 5), np.int32), np.ones((2, 5), np.int32)
  batch_lib.check_prompts(tokens, mask, 5)
  with pytest.raises(ValueError, match=r"must be \[n, max_prompt_len=6\]"):
    batch_lib.check_prompts(tokens, mask, 6)
  mask[1, -1] = 0
  with pytest.raises(ValueError, match="LEFT padded"):
    batch_lib.check_prompts(tokens, mask, 5)


def test_shared_prompt_prefix_changes_no_number():
  """`data.share_prompt_prefix` (on by default) runs the prompts' common start once per
  batch, on the 8-device mesh: the rollouts, the sequence scores (also with each group's
  prompt run once, `group_size=G`) and one update equal those of the plain left-padded
  layout."""
  on = experiment.build(tiny_config())
  off = experiment.build(tiny_config(**{"data.share_prompt_prefix": False}))
  one = experiment.build(tiny_config(**{"mesh.num_devices": 1}))  # groups run once here
  assert off.shared_prefix == 0 and on.shared_prefix > 10
  prefix = on.tokenizer.decode(list(on.prompt_prefix))
  assert all(on.prompt_text(ex.question).startswith(prefix) for ex in on.test_examples)
  examples = on.train_examples[:4]
  results, grouped = [], []
  for exp in (on, off, one):
    state, _ = trainer.create_state(exp, exp.student.params)
    batch, host = trainer.make_batch(exp, state.params, examples, jax.random.PRNGKey(3), True)
    scores = exp.score_sequences(state.params, batch)
    grouped.append((scores, exp.score_sequences(state.params, batch, group_size=exp.hp.group_size)))
    step = exp.make_train_step(exp.hp, trainer.create_state(exp, exp.student.params)[1])
    _, metrics = step(state, exp.step_teacher_params, batch)
    real = np.asarray(batch["input_mask"])
    results.append((jax.device_get(batch), scores, jax.device_get(metrics), real))
  (b_on, s_on, m_on, r_on), (b_off, s_off, m_off, r_off), _ = results
  assert one.group_prefix > one.shared_prefix and len(prefix_levels(
      len(r_on), r_on.shape[1], one.shared_prefix, one.group_prefix, one.hp.group_size)) == 2
  # The same real tokens in each row, in order; responses in the same columns.
  for i in range(len(r_on)):
    np.testing.assert_array_equal(b_on["inputs"][i][r_on[i]], b_off["inputs"][i][r_off[i]])
  np.testing.assert_array_equal(b_on["mask"], b_off["mask"])
  np.testing.assert_allclose(b_on["old_logprobs"], b_off["old_logprobs"], atol=1e-5)
  for k in s_off:
    np.testing.assert_allclose(s_on[k], s_off[k], rtol=1e-4, atol=1e-4, err_msg=k)
    for plain, by_group in grouped:
      np.testing.assert_allclose(by_group[k], plain[k], rtol=1e-4, atol=1e-4, err_msg=k)
  for k in ("loss", "grad_norm", "update_norm"):
    np.testing.assert_allclose(m_on[k], m_off[k], rtol=1e-4, err_msg=k)
