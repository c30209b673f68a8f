"""`cmdp.plan.planner`: the roofline, the decode loop against its floor, resident bytes
against hand counts, slice variants.

Runs on the 8 simulated CPU devices of tests/conftest.py; the TPU case needs libtpu (the
`tpu` extra) and is skipped without it.
"""
import functools

import jax
import pytest

from cmdp import models
from cmdp.plan import abstract, phases, planner, topology
from tests.plan.small import L, V, hand_optimizer_bytes, hand_param_bytes, small_config
from tests.training.tiny import load_config_file


def test_roofline_takes_the_larger_of_compute_and_memory_time():
  v5e = topology.CHIPS["v5e"]
  # 394 TFLOP and 819 GB on a v5e: 2 s of compute, 1 s of HBM traffic.
  r = planner.roofline(394e12, 819e9, v5e.peak_flops, v5e.hbm_bandwidth)
  assert (r.compute_s, r.memory_s, r.seconds, r.bound) == (
      pytest.approx(2.0), pytest.approx(1.0), pytest.approx(2.0), "compute")
  # A decode step's shape: 3.1 GB of weights and cache for 6.2 GFLOP on a v6e.
  v6e = topology.CHIPS["v6e"]
  r = planner.roofline(6.2e9, 3.1e9, v6e.peak_flops, v6e.hbm_bandwidth)
  assert r.bound == "memory"
  assert r.seconds == pytest.approx(3.1e9 / 1640e9) and r.compute_s == pytest.approx(6.2e9 / 918e12)


def _rollout_phase(total, step, steps, kv_cache=0, floor=None):
  program = phases.Program(0, 0, 0, 0, total)
  return phases.Phase("rollout", "student", program, total, (), kv_cache,
                      decode_step=step, decode_steps=steps, decode_loop=step * steps,
                      decode_floor=floor)


def test_rollout_roofline_is_its_prefill_plus_its_decode_loop():
  # Prefill: 197 TFLOP, 81.9 GB (1 s compute-bound); decode: 10 steps of 0.197 TFLOP and
  # 81.9 GB (0.1 s memory-bound each).
  step = phases.Cost(0.197e12, 81.9e9, None)
  phase = _rollout_phase(phases.Cost(197e12, 81.9e9, None) + step * 10, step, 10)
  t = topology.parse("v5e-8")
  parts = planner.phase_rooflines(phase, t)
  assert [(k, r.bound) for k, r in parts.items()] == [("prefill", "compute"),
                                                        ("decode", "memory")]
  assert parts["prefill"].seconds == pytest.approx(1.0)
  assert parts["decode"].seconds == pytest.approx(1.0)
  assert planner.phase_seconds(phase, t)[0] == pytest.approx(2.0)
  assert planner.phase_rooflines(phase, topology.parse("cpu:8")) is None


def test_decode_loop_reports_its_floor_and_the_ratio():
  import types  # pylint: disable=g-import-not-at-top
  # 4 steps of 10 FLOPs and 1,000 bytes; a floor of 3,200 bytes: 1.25 x.
  step = phases.Cost(10.0, 1000.0, None)
  phase = _rollout_phase(step * 4, step, 4, kv_cache=800, floor=3200.0)
  plan = types.SimpleNamespace(phases=[phase], topology=topology.parse("v5e-8"))
  loop = planner.decode_loop(plan)
  assert loop["steps"] == 4
  assert loop["total"].bytes_accessed == 4000.0
  assert loop["floor"].seconds == pytest.approx(3200.0 / 819e9)
  assert loop["ratio"] == pytest.approx(1.25)


@pytest.mark.parametrize("mesh, fsdp", [({"data": 1, "fsdp": 8, "tensor": 1}, 8),
                                        ({"data": 2, "fsdp": 4, "tensor": 1}, 4)])
def test_resident_bytes_equal_hand_counts_on_cpu8(mesh, fsdp):
  exp = abstract.abstract_experiment(small_config(**mesh), jax.devices()[:8])
  got = planner.resident_bytes(exp)
  assert got == {"student_params": hand_param_bytes(1, fsdp),
                 "optimizer": hand_optimizer_bytes(1, fsdp),
                 "teacher_params": hand_param_bytes(L, fsdp)}


@pytest.mark.skipif(not topology.libtpu_available(),
                    reason="libtpu is not installed (pip install -e '.[tpu]'); the CPU cases "
                           "check the same byte counts")
def test_tpu_topology_bytes_and_compile():
  t = topology.parse("v5e-8")
  devices = topology.devices(t)
  assert [d.platform for d in devices] == ["tpu"] * 8
  exp = abstract.abstract_experiment(small_config(data=1, fsdp=8, tensor=1), devices)
  assert planner.resident_bytes(exp) == {"student_params": hand_param_bytes(1, 8),
                                         "optimizer": hand_optimizer_bytes(1, 8),
                                         "teacher_params": hand_param_bytes(L, 8)}
  program = phases._scoring_program(exp)  # pylint: disable=protected-access
  rows, t_len = exp.config.batch_size // 8, abstract.sequence_length(exp)
  # bfloat16 teacher logits (the config's teacher_logits_dtype) over the response window,
  # rows split over 8; the TPU layout pads the second-minor dimension (positions) to a
  # multiple of 8.
  window = t_len - exp.step_config.response_start
  padded = -(-window // 8) * 8
  assert program.output == rows * padded * V * 2
  assert program.cost.seconds is not None and program.cost.seconds > 0


def test_slice_variants_keep_whole_rows_per_chip():
  """qwen_math (512 sequences, groups of 8, 8 microbatches) on more chips: fsdp over all
  of them, microbatches cut until each chip holds whole rows; a resident-state bound from
  the parameter counts (bfloat16 teacher, float32 student with two Adam moments)."""
  config = load_config_file("qwen_math.py", "")
  for chips, accum in ((8, 8), (32, 8), (64, 8), (128, 4), (256, 2)):
    v = planner.slice_variant(config, chips)
    assert (v.mesh.data, v.mesh.fsdp, v.mesh.tensor, v.grad_accum_steps) == (1, chips, 1, accum)
  assert planner.slice_variant(config, 1024) is None  # 512 rows over 1024 chips
  t, s = abstract.model_configs(config)
  count = lambda cfg: sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))))
  assert planner.resident_total(config) == 2 * count(t) + 3 * 4 * count(s) + 2 * 4

