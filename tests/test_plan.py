"""The planner: topology names, presets, per-device bytes against hand counts, the CLI.

Runs on the 8 simulated CPU devices of tests/conftest.py; the TPU case needs libtpu (the
`tpu` extra) and is skipped without it.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cmdp import models
from cmdp.models import presets
from cmdp.plan import abstract, phases, planner, topology
from tests.training.tiny import _ROOT, load_config_file

# ---- topology names ----


@pytest.mark.parametrize("name, desc, chips, kind", [
    ("v5e-32", "v5e:4x8", 32, "v5e"),
    ("v5litepod-32", "v5e:4x8", 32, "v5e"),
    ("v5e-8", "v5e:2x4", 8, "v5e"),
    ("v4-8", "v4:2x2x1", 4, "v4"),
    ("v4-64", "v4:2x4x4", 32, "v4"),  # v4 counts TensorCores: 64 cores = 32 chips
    ("v4-128", "v4:4x4x4", 64, "v4"),
    ("v5p-128", "v5p:4x4x4", 64, "v5p"),
    ("v5p-256", "v5p:4x4x8", 128, "v5p"),
    ("v6e-64", "v6e:8x8", 64, "v6e"),
])
def test_accelerator_types_map_to_chip_grids(name, desc, chips, kind):
  t = topology.parse(name)
  assert (t.platform, t.desc_name, t.num_devices, t.chip.kind) == ("tpu", desc, chips, kind)


def test_cpu_topology_and_unknown_names():
  t = topology.parse("cpu:8")
  assert (t.platform, t.num_devices, t.chip) == ("cpu", 8, None)
  for bad in ("v5e-33", "v4-63", "tpu-8", "cpu:0", "v7-8"):
    with pytest.raises(ValueError, match=r"--topology=.*Valid: .*v5litepod-32.*cpu:N"):
      topology.parse(bad)


def test_hbm_table():
  gib = 1 << 30
  assert {k: c.hbm_bytes // gib for k, c in topology.CHIPS.items()} == {
      "v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def test_chip_table_has_published_flops_and_bandwidth():
  assert {k: (c.peak_flops / 1e12, c.hbm_bandwidth / 1e9) for k, c in topology.CHIPS.items()} \
      == {"v4": (275, 1228), "v5e": (197, 819), "v5p": (459, 2765), "v6e": (918, 1640)}


# ---- the roofline ----


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


def test_decode_floor_reads_the_weights_every_step_and_the_attended_cache():
  # P = 4 prompt slots, N = 5 new tokens: 8 slots of 100 bytes, 4 decode steps attending
  # over 5, 6, 7 and 8 slots (26 slot reads), each multiplying by 1,000 bytes of weights.
  assert phases.decode_floor(1000.0, 800.0, 4, 5) == pytest.approx(4 * 1000 + 26 * 100)
  # Qwen2.5-1.5B on a v5e-8 (configs/qwen_math.py): 3.09e9 bytes of weights, a 1.88e9-byte
  # cache of 1,023 slots; 511 steps attending over 513..1,023 slots.
  attended = sum(512 + i for i in range(1, 512))
  assert phases.decode_floor(3.09e9, 1.88e9, 512, 512) == pytest.approx(
      511 * 3.09e9 + 1.88e9 * attended / 1023)


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
  config = _small_config(data=1, fsdp=8, tensor=1)
  exp = abstract.abstract_experiment(config, jax.devices()[:8])
  c = jnp.dtype(exp.student.config.dtype).itemsize
  q, kv = H * HD, KVH * HD
  layer = c * (D * (q + 2 * kv) + (q + 2 * kv) + q * D + 3 * D * F) + 4 * 2 * D
  rows = config.batch_size // 8
  assert phases.decode_weight_bytes(exp, "student") == layer + c * D * V + rows * D * c


# ---- presets ----


@pytest.mark.parametrize("name, published", [
    ("qwen2.5-math-7b", 7_615_616_512),
    ("qwen2.5-math-1.5b", 1_543_714_304),
    ("llama-3.1-8b", 8_030_261_248),
    ("llama-3.2-1b", 1_235_814_400),
])
def test_presets_have_the_published_parameter_counts(name, published):
  cfg = presets.get("preset:" + name)
  shapes = jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == published


def test_unknown_preset_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"preset:qwen2.5-math-7b"):
    presets.get("preset:qwen-9000")


def test_hub_ids_without_files_fall_back_to_presets():
  assert abstract.architecture("Qwen/Qwen2.5-Math-7B", "teacher.path") == presets.get(
      "qwen2.5-math-7b")
  with pytest.raises(ValueError, match=r"config\.student\.path='nobody/nothing'.*preset:NAME"):
    abstract.architecture("nobody/nothing", "student.path")


def test_a_preset_path_trains_from_a_random_init_of_its_architecture(monkeypatch):
  from cmdp.training import models as model_lib  # pylint: disable=import-outside-toplevel
  tiny = models.ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=2, num_kv_heads=1, head_dim=16)
  monkeypatch.setitem(presets.PRESETS, "tiny-test", tiny)
  config = load_config_file("tiny.py")
  config.teacher.path = config.student.path = "preset:tiny-test"
  teacher, student, tokenizer = model_lib.load_teacher_and_student(config, jax.random.key(0))
  assert teacher.config.num_layers == student.config.num_layers == 2
  assert teacher.config.dtype == config.teacher.dtype and len(tokenizer) <= 128
  assert teacher.params["embed_tokens"]["embedding"].shape == (128, 32)
  config.tokenizer = ""  # a preset brings no tokenizer
  with pytest.raises(ValueError,
                     match=r"config\.teacher\.path='preset:tiny-test'.*tokenizer='char'"):
    model_lib.load_teacher_and_student(config, jax.random.key(0))


# ---- per-device bytes against hand counts ----

D, F, H, KVH, HD, L, V = 64, 128, 4, 2, 16, 2, 256  # teacher; the student has 1 layer


def _small_config(**mesh):
  """A tiny teacher/student pair whose every sharded dimension divides 8."""
  config = load_config_file("qwen_math.py", "small")
  config.teacher.random_init.update(vocab_size=V, hidden_size=D, intermediate_size=F,
                                    num_heads=H, num_kv_heads=KVH, head_dim=HD, num_layers=L)
  config.student.random_init.update(vocab_size=V, hidden_size=D, intermediate_size=F,
                                    num_heads=H, num_kv_heads=KVH, head_dim=HD, num_layers=1)
  config.mesh.update(mesh)
  return config


def _hand_param_bytes(layers: int, fsdp: int) -> int:
  """float32 bytes per device: matrices split over fsdp along D; biases and norms whole."""
  q, kv = H * HD, KVH * HD
  split = V * D + layers * (D * q + 2 * D * kv + q * D + 3 * D * F)  # tied embedding
  whole = layers * (q + 2 * kv) + layers * 2 * D + D  # q/k/v biases, 2 norms per layer, final
  return 4 * (split // fsdp + whole)


def _hand_optimizer_bytes(layers: int, fsdp: int) -> int:
  """AdamW's two moments mirror the params; two int32 step counters (adam, schedule)."""
  return 2 * _hand_param_bytes(layers, fsdp) + 2 * 4


@pytest.mark.parametrize("mesh, fsdp", [({"data": 1, "fsdp": 8, "tensor": 1}, 8),
                                        ({"data": 2, "fsdp": 4, "tensor": 1}, 4)])
def test_resident_bytes_equal_hand_counts_on_cpu8(mesh, fsdp):
  exp = abstract.abstract_experiment(_small_config(**mesh), jax.devices()[:8])
  got = planner.resident_bytes(exp)
  assert got == {"student_params": _hand_param_bytes(1, fsdp),
                 "optimizer": _hand_optimizer_bytes(1, fsdp),
                 "teacher_params": _hand_param_bytes(L, fsdp)}


def test_kv_cache_bytes_equal_hand_count():
  config = _small_config(data=1, fsdp=8, tensor=1)
  exp = abstract.abstract_experiment(config, jax.devices()[:8])
  b, slots = config.batch_size // 8, config.data.max_prompt_len + config.rollout.max_new_tokens - 1
  # float32 k and v per layer [B, KVH, hd, S]; mask bool [B, S]; pos int32 [B]; index int32.
  assert (phases.kv_cache_bytes(exp, "student")
          == 2 * 4 * b * KVH * HD * slots + b * slots + 4 * b + 4)


def test_teacher_scoring_flops_count_every_layer():
  """XLA counts a scanned layer once; the planner must count L of them."""
  config = _small_config(data=1, fsdp=8, tensor=1)
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
    config = _small_config(data=1, fsdp=1, tensor=1)
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
  groups, p = rows // config.loss.group_size, exp.step_config.group_prefix
  assert p == config.data.max_prompt_len - 1 and groups < rows
  matmuls = lambda tokens: 2 * tokens * (D * q + 2 * D * kv + q * D + 3 * D * F)
  layer = (matmuls(groups * p + rows * (t - p)) + 4 * H * HD * groups * p * p
           + 4 * H * HD * rows * (t - p) * t)
  assert abs(raw[L + 2] - raw[L]) < 0.2 * layer  # XLA: the scanned layer once
  assert layer <= teacher.layer_cost.flops <= 1.25 * layer


@pytest.mark.skipif(not topology.libtpu_available(),
                    reason="libtpu is not installed (pip install -e '.[tpu]'); the CPU cases "
                           "check the same byte counts")
def test_tpu_topology_bytes_and_compile():
  t = topology.parse("v5e-8")
  devices = topology.devices(t)
  assert [d.platform for d in devices] == ["tpu"] * 8
  exp = abstract.abstract_experiment(_small_config(data=1, fsdp=8, tensor=1), devices)
  assert planner.resident_bytes(exp) == {"student_params": _hand_param_bytes(1, 8),
                                         "optimizer": _hand_optimizer_bytes(1, 8),
                                         "teacher_params": _hand_param_bytes(L, 8)}
  program = phases._scoring_program(exp)  # pylint: disable=protected-access
  rows, t_len = exp.config.batch_size // 8, abstract.sequence_length(exp)
  # bfloat16 teacher logits (the config's teacher_logits_dtype) over the response window,
  # rows split over 8; the TPU layout pads the second-minor dimension (positions) to a
  # multiple of 8.
  window = t_len - exp.step_config.response_start
  padded = -(-window // 8) * 8
  assert program.output == rows * padded * V * 2
  assert program.cost.seconds is not None and program.cost.seconds > 0


# ---- the command line ----


def test_cli_plans_the_small_qwen_config(tmp_path):
  out = tmp_path / "plan.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "-m", "cmdp.plan", "--config",
       os.path.join(_ROOT, "configs/qwen_math.py:small"), "--topology", "cpu:4",
       "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=_ROOT, env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip() == ""  # a quiet report
  assert "per device" in proc.stdout and "fits" in proc.stdout
  plan = json.loads(out.read_text())
  assert set(plan["per_device_bytes"]) >= {"student_params", "optimizer", "teacher_params",
                                           "kv_cache", "temp", "total"}
  for key in ("hbm_bytes", "fits", "flops_per_step", "estimated_step_s", "mesh"):
    assert key in plan
  assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert plan["fits"] is True and plan["hbm_bytes"] is None
  # The teacher shares the student's mesh: it runs inside the train step, no phase of its own.
  assert set(plan["phases"]) == {"rollout", "train step"}
  assert 0 < plan["teacher_in_train_step"]["flops"] < plan["phases"]["train step"]["flops"]
  assert plan["flops_per_step"] > 0
  assert plan["param_dtypes"] == {"teacher": "float32", "student": "float32"}
  assert 0 < plan["model_matmul_flops_per_step"] < plan["flops_per_step"]
  assert plan["peak_buffers"] and all(b["bytes"] > 0 for b in plan["peak_buffers"])
  assert "largest buffers live at the" in proc.stdout
  # No chip figures for CPU devices: no roofline; the tokens generated are still counted.
  assert plan["roofline"] is None
  assert plan["generated_tokens_per_step"] == plan["batch_size"] * 8
  assert set(plan["tokens_per_s_per_chip"]) == {"rollout", "step"}


@pytest.mark.parametrize("name", ["llama_math.py", "qwen_math.py"])
def test_paper_configs_name_their_slice_and_validate(name):
  from cmdp.objectives import available_objectives  # pylint: disable=import-outside-toplevel
  from cmdp.training import config as config_lib  # pylint: disable=import-outside-toplevel
  for objective in sorted(available_objectives()):
    for arg in ("", ",task=math", ",small"):
      config_lib.validate(load_config_file(name, f"objective={objective}{arg}"))
  with open(os.path.join(_ROOT, "configs", name)) as f:
    slice_line = [l for l in f if l.startswith("SLICE = ")]
  assert len(slice_line) == 1
  assert topology.parse(slice_line[0].split('"')[1]).platform == "tpu"


# ---- the peak's buffers, the smallest slice ----


def test_peak_buffers_name_the_largest_live_arrays(tmp_path):
  """x [256, 512] @ w [512, 1024], tanh, @ w.T: at the peak live w (2 MiB), the tanh's
  [256, 1024] (1 MiB), x and the output (0.5 MiB each), by XLA's own schedule."""
  from cmdp.plan import buffers  # pylint: disable=import-outside-toplevel
  f = jax.jit(lambda x, w: jax.numpy.tanh(x @ w) @ w.T)
  f32 = jax.numpy.float32
  f.lower(jax.ShapeDtypeStruct((256, 512), f32), jax.ShapeDtypeStruct((512, 1024), f32)).compile(
      compiler_options={"xla_dump_to": str(tmp_path)})
  top = buffers.peak_buffers(str(tmp_path))
  assert top[0] == buffers.Buffer(512 * 1024 * 4, 1, "f32[512,1024]", "argument w")
  assert top[1].bytes == 256 * 1024 * 4 and top[1].shape == "f32[256,1024]"
  assert sum(b.bytes for b in top) == (512 * 1024 + 256 * 1024 + 2 * 256 * 512) * 4


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


def test_matmul_flop_count_matches_xla_on_one_layer():
  """`cmdp.plan.flops` against XLA's cost analysis of the forward (one CPU device): a
  layer (one layer's program minus no layer's) and the head; XLA adds the elementwise
  work (norms, softmax, SwiGLU), a few percent at this width."""
  from cmdp.plan import flops  # pylint: disable=import-outside-toplevel
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
  from cmdp.plan import flops  # pylint: disable=import-outside-toplevel
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
