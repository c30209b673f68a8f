"""The planner tests' small teacher / student pair and its hand counts of bytes per device."""
from tests.training.tiny import load_config_file

D, F, H, KVH, HD, L, V = 64, 128, 4, 2, 16, 2, 256  # teacher; the student has 1 layer


def small_config(**mesh):
  """A tiny teacher/student pair whose every sharded dimension divides 8."""
  config = load_config_file("qwen_math.py", "small")
  config.teacher.random_init.update(vocab_size=V, hidden_size=D, intermediate_size=F,
                                    num_heads=H, num_kv_heads=KVH, head_dim=HD, num_layers=L)
  config.student.random_init.update(vocab_size=V, hidden_size=D, intermediate_size=F,
                                    num_heads=H, num_kv_heads=KVH, head_dim=HD, num_layers=1)
  config.mesh.update(mesh)
  return config


def hand_param_bytes(layers: int, fsdp: int) -> int:
  """float32 bytes per device: matrices split over fsdp along D; biases and norms whole."""
  q, kv = H * HD, KVH * HD
  split = V * D + layers * (D * q + 2 * D * kv + q * D + 3 * D * F)  # tied embedding
  whole = layers * (q + 2 * kv) + layers * 2 * D + D  # q/k/v biases, 2 norms per layer, final
  return 4 * (split // fsdp + whole)


def hand_optimizer_bytes(layers: int, fsdp: int) -> int:
  """AdamW's two moments mirror the params; two int32 step counters (adam, schedule)."""
  return 2 * hand_param_bytes(layers, fsdp) + 2 * 4

