"""`cmdp.plan.phases`: the decode floor and windows, decode-weight and KV-cache bytes against
hand counts, the teacher's FLOPs counted for every layer.

Runs on the 8 simulated CPU devices of tests/conftest.py.
"""
import jax
import jax.numpy as jnp
import pytest

from cmdp.plan import abstract, phases
from tests.plan.small import D, F, H, HD, KVH, L, V, small_config


def test_decode_floor_reads_the_weights_every_step_and_the_attended_cache():
  # P = 4 prompt slots, N = 5 new tokens: 8 slots of 100 bytes, 4 decode steps attending
  # over 5, 6, 7 and 8 slots (26 slot reads), each multiplying by 1,000 bytes of weights.
  assert phases.decode_floor(1000.0, 800.0, 4, 5) == pytest.approx(4 * 1000 + 26 * 100)
  # Qwen2.5-1.5B on a v5e-8 (configs/qwen_math.py): 3.09e9 bytes of weights, a 1.88e9-byte
  # cache of 1,023 slots; 511 steps attending over 513..1,023 slots.
  attended = sum(512 + i for i in range(1, 512))
  assert phases.decode_floor(3.09e9, 1.88e9, 512, 512) == pytest.approx(
      511 * 3.09e9 + 1.88e9 * attended / 1023)


def test_decode_windows_count_the_steps_at_each_window():
  import types  # pylint: disable=g-import-not-at-top
  config = types.SimpleNamespace(data=types.SimpleNamespace(max_prompt_len=512),
                                 rollout=types.SimpleNamespace(max_new_tokens=512))
  exp = types.SimpleNamespace(config=config)
  # Steps 1..511 write slots 512..1022 and read P + i slots: 513..640 in the first window.
  assert phases.decode_windows(exp, "student") == {640: 128, 768: 128, 896: 128, 1023: 127}
  config.data.max_prompt_len, config.rollout.max_new_tokens = 16, 8  # 23 slots: one window
  assert phases.decode_windows(exp, "student") == {23: 7}


def test_decode_weight_bytes_equal_hand_count():
  """The student's decode weights (one layer, tied head) in its compute dtype, norm scales
  in float32, whole on every chip, and its rows of the embedding."""
  config = small_config(data=1, fsdp=8, tensor=1)
  exp = abstract.abstract_experiment(config, jax.devices()[:8])
  c = jnp.dtype(exp.student.config.dtype).itemsize
  q, kv = H * HD, KVH * HD
  layer = c * (D * (q + 2 * kv) + (q + 2 * kv) + q * D + 3 * D * F) + 4 * 2 * D
  rows = config.batch_size // 8
  assert phases.decode_weight_bytes(exp, "student") == layer + c * D * V + rows * D * c


def test_kv_cache_bytes_equal_hand_count():
  config = small_config(data=1, fsdp=8, tensor=1)
  exp = abstract.abstract_experiment(config, jax.devices()[:8])
  b, slots = config.batch_size // 8, config.data.max_prompt_len + config.rollout.max_new_tokens - 1
  # float32 k and v per layer [B, KVH, hd, S]; mask bool [B, S]; pos int32 [B]; index int32.
  assert (phases.kv_cache_bytes(exp, "student")
          == 2 * 4 * b * KVH * HD * slots + b * slots + 4 * b + 4)


def test_teacher_scoring_flops_count_every_layer():
  """XLA counts a scanned layer once; the planner must count L of them."""
  config = small_config(data=1, fsdp=8, tensor=1)
  devices = jax.devices()[:8]
  exp = abstract.abstract_experiment(config, devices)
  phase = phases.teacher_scoring(exp, devices)
  rows, t = config.batch_size // 8, abstract.sequence_length(exp)
  q, kv = H * HD, KVH * HD
  window = t - exp.step_config.response_start  # logits only over the response
  matmuls = 2 * rows * (t * L * (D * q + 2 * D * kv + q * D + 3 * D * F) + window * D * V)
  attention = 2 * 2 * rows * L * H * t * t * HD  # scores and weighted values, full [T, T]
  hand = matmuls + attention
  assert hand <= phase.cost.flops <= 1.25 * hand  # the rest: norms, softmax, RoPE, SiLU
  assert phase.program.cost.flops < 0.8 * hand  # what XLA says without the trip count


def test_train_step_needs_every_teacher_layer_added():
  """The teacher runs inside the train step, where XLA counts its layer scan once whatever
  the depth; the planner adds the other layers from the teacher-scoring phase's per-layer
  cost (one teacher layer's forward on the whole batch)."""
  devices = jax.devices()[:1]
  raw = {}
  for layers in (L, L + 2):
    config = small_config(data=1, fsdp=1, tensor=1)
    config.grad_accum_steps = 1
    config.teacher.random_init.num_layers = layers
    exp = abstract.abstract_experiment(config, devices)
    teacher = phases.teacher_scoring(exp, devices)
    assert teacher.within == "train step"
    raw[layers] = phases._train_program(exp).cost.flops  # pylint: disable=protected-access
  rows, t = config.batch_size, abstract.sequence_length(exp)
  q, kv = H * HD, KVH * HD
  # One device: each group's prompt (the first `group_prefix` columns) runs once, over
  # itself; every row's own columns attend over the whole length.
  groups, p = rows // config.rollout.group_size, exp.step_config.group_prefix
  assert p == config.data.max_prompt_len - 1 and groups < rows
  matmuls = lambda tokens: 2 * tokens * (D * q + 2 * D * kv + q * D + 3 * D * F)
  layer = (matmuls(groups * p + rows * (t - p)) + 4 * H * HD * groups * p * p
           + 4 * H * HD * rows * (t - p) * t)
  assert abs(raw[L + 2] - raw[L]) < 0.2 * layer  # XLA: the scanned layer once
  assert layer <= teacher.layer_cost.flops <= 1.25 * layer

