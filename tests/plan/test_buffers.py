"""`cmdp.plan.buffers`: the peak's largest live arrays, by XLA's own schedule."""
import jax

from cmdp.plan import buffers


def test_peak_buffers_name_the_largest_live_arrays(tmp_path):
  """x [256, 512] @ w [512, 1024], tanh, @ w.T: at the peak live w (2 MiB), the tanh's
  [256, 1024] (1 MiB), x and the output (0.5 MiB each), by XLA's own schedule."""
  f = jax.jit(lambda x, w: jax.numpy.tanh(x @ w) @ w.T)
  f32 = jax.numpy.float32
  f.lower(jax.ShapeDtypeStruct((256, 512), f32), jax.ShapeDtypeStruct((512, 1024), f32)).compile(
      compiler_options={"xla_dump_to": str(tmp_path)})
  top = buffers.peak_buffers(str(tmp_path))
  assert top[0] == buffers.Buffer(512 * 1024 * 4, 1, "f32[512,1024]", "argument w")
  assert top[1].bytes == 256 * 1024 * 4 and top[1].shape == "f32[256,1024]"
  assert sum(b.bytes for b in top) == (512 * 1024 + 256 * 1024 + 2 * 256 * 512) * 4

