"""refit_cut against the same layer-wise least squares done by hand: the Hugging Face PyTorch
model's layers (hooks read each layer's output, its residual after attention and down_proj's
input), numpy float64 for the regressions, and torch for the refitted student's logits."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import cmdp.models as M
from tests.models import hf_tiny

RIDGE = 1e-2  # more tokens than features and a ridge: a well-posed fit at float32 inputs


def _sequences(shared: int, seed: int = 0):
  """Eight rows of 16 tokens: left padding, or `[shared prefix, pad, own]` with `shared`."""
  rs = np.random.RandomState(seed)
  tokens = rs.randint(3, hf_tiny.VOCAB, (8, 16)).astype(np.int32)
  mask = np.ones(tokens.shape, bool)
  if shared:
    tokens[:, :shared] = tokens[0, :shared]
    mask[1, shared:shared + 2] = mask[3, shared:shared + 1] = False
  else:
    mask[1, :3] = mask[2, :1] = False
  return np.where(mask, tokens, 2), mask


def _fitted_layers(keep, n):
  """Student layers from the first one whose output is not the teacher's."""
  for j, k in enumerate(keep):
    nxt = keep[j + 1] if j + 1 < len(keep) else n
    if keep[:j + 1] != tuple(range(j + 1)) or nxt != k + 1:
      return list(range(j, len(keep)))
  return []


def _run(model, tokens, mask, taps):
  """Runs `model`, returning what the hooks in `taps` ({name: (module, pre)}) saw, float64."""
  seen = {}

  def hook(name):
    def fn(module, args, out=None):
      x = args[0] if out is None else out
      seen[name] = (x[0] if isinstance(x, tuple) else x).detach().double().numpy()
    return fn
  handles = [m.register_forward_pre_hook(hook(k)) if pre else m.register_forward_hook(hook(k))
             for k, (m, pre) in taps.items()]
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    logits = model(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                   attention_mask=torch.as_tensor(mask.astype(np.int64)),
                   position_ids=torch.as_tensor(positions), use_cache=False).logits.float().numpy()
  for h in handles:
    h.remove()
  return seen, logits


def _reference(model, keep, tokens, mask, shared):
  """The refit by hand: `(down_proj kernels [F, D] per student layer, errors, torch logits)`."""
  n = model.config.num_hidden_layers
  outputs, _ = _run(model, tokens, mask, {i: (l, False) for i, l in enumerate(model.model.layers)})
  student = copy.deepcopy(model)
  student.model.layers = torch.nn.ModuleList([student.model.layers[k] for k in keep])
  student.config.num_hidden_layers = len(keep)
  weight = mask.astype(np.float64)
  weight[1:, :shared] = 0  # the shared prefix counts once
  errors = []
  for j in _fitted_layers(keep, n):
    layer = student.model.layers[j]
    seen, _ = _run(student, tokens, mask, {"a": (layer.post_attention_layernorm, True),
                                           "z": (layer.mlp.down_proj, True)})
    nxt = keep[j + 1] if j + 1 < len(keep) else n
    y = outputs[nxt - 1]
    w = (weight / np.linalg.norm(y, axis=-1))[..., None]
    z, r = (seen["z"] * w).reshape(-1, seen["z"].shape[-1]), ((y - seen["a"]) * w).reshape(
        -1, y.shape[-1])
    w0 = layer.mlp.down_proj.weight.detach().double().numpy().T
    gram = z.T @ z
    lam = RIDGE * np.trace(gram) / gram.shape[0]
    fit = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), z.T @ r + lam * w0)
    err = lambda m: np.linalg.norm(z @ m - r) / np.linalg.norm(r)
    errors.append((err(w0), err(fit)))
    layer.mlp.down_proj.weight.data = torch.as_tensor(fit.T, dtype=torch.float32)
  kernels = [l.mlp.down_proj.weight.detach().numpy().T for l in student.model.layers]
  return np.stack(kernels), errors, _run(student, tokens, mask, {})[1]


def _load(model, tmp_path):
  model.save_pretrained(tmp_path)
  config, params, _ = M.load_pretrained(str(tmp_path))
  return config, params


@pytest.mark.parametrize("keep,shared", [((0, 1, 3), 0), ((0, 1, 3), 3), ((1, 2, 4), 0),
                                         ((0, 2, 4), 4)])
def test_matches_the_fit_by_hand(keep, shared, tmp_path):
  model = hf_tiny.random_torch_model("llama_plain", seed=1, num_layers=5)
  config, params = _load(model, tmp_path)
  tokens, mask = _sequences(shared)
  ours, fits = M.refit_cut(config, params, keep, jnp.asarray(tokens), jnp.asarray(mask),
                           shared_prefix=shared, ridge=RIDGE)
  kernels, errors, logits = _reference(model, keep, tokens, mask, shared)

  fitted = _fitted_layers(keep, 5)
  assert [f.layer for f in fits] == fitted
  assert [f.teacher_layer for f in fits] == [keep[j] for j in fitted]
  assert [f.target_layer for f in fits] == [
      (keep[j + 1] if j + 1 < len(keep) else 5) - 1 for j in fitted]
  np.testing.assert_allclose([(f.error_before, f.error_after) for f in fits], errors,
                             rtol=2e-3, atol=1e-4)
  assert all(f.error_after < f.error_before for f in fits)
  got = np.asarray(ours["layers"]["mlp"]["down_proj"]["kernel"])
  np.testing.assert_allclose(got, kernels, rtol=1e-3, atol=1e-4 * np.abs(kernels).max())
  # Everything else is the teacher's kept layers, and the student runs as torch's refit.
  for name in ("q_proj", "o_proj"):
    np.testing.assert_array_equal(ours["layers"]["self_attn"][name]["kernel"],
                                  np.asarray(params["layers"]["self_attn"][name]["kernel"])[
                                      list(keep)])
  # In passes of 3 rows (3, 3, 2): the same sums, the prefix counted once.
  chunked, _ = M.refit_cut(config, params, keep, jnp.asarray(tokens), jnp.asarray(mask),
                           shared_prefix=shared, ridge=RIDGE, batch_size=3)
  np.testing.assert_allclose(chunked["layers"]["mlp"]["down_proj"]["kernel"], got, rtol=1e-4,
                             atol=1e-5 * np.abs(got).max())
  student = config.replace(num_layers=len(keep))
  out = np.asarray(M.forward(student, ours, jnp.asarray(tokens), jnp.asarray(mask)))
  np.testing.assert_allclose(out[mask], logits[mask], atol=2e-3)


def test_identity_layers_leave_the_cut_as_it_is():
  """Dropped layers that add nothing (zero o_proj and down_proj): the cut is already exact,
  and the ridge towards the layer's own weights keeps them."""
  config = M.ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=4,
                         num_heads=2, num_kv_heads=1, head_dim=8)
  params = M.init_params(config, jax.random.PRNGKey(0))
  for name, part in (("o_proj", "self_attn"), ("down_proj", "mlp")):
    w = params["layers"][part][name]["kernel"]
    params["layers"][part][name]["kernel"] = w.at[jnp.asarray([1, 2])].set(0.0)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 0, 64)
  out, fits = M.refit_cut(config, params, (0, 3), tokens, jnp.ones(tokens.shape, bool))
  assert [f.layer for f in fits] == [0, 1]
  assert all(f.error_before < 1e-3 for f in fits)
  np.testing.assert_allclose(out["layers"]["mlp"]["down_proj"]["kernel"],
                             np.asarray(params["layers"]["mlp"]["down_proj"]["kernel"])[[0, 3]],
                             atol=1e-4)


def test_refuses_bad_arguments():
  config = M.ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=4,
                         num_heads=2, num_kv_heads=1, head_dim=8)
  params = M.init_params(config, jax.random.PRNGKey(0))
  tokens = jnp.zeros((2, 5), jnp.int32)
  mask = jnp.ones((2, 5), bool)
  for keep in ((), (2, 1), (0, 4), (1, 1)):
    with pytest.raises(ValueError, match="keep="):
      M.refit_cut(config, params, keep, tokens, mask)
  with pytest.raises(ValueError, match="ridge="):
    M.refit_cut(config, params, (0, 2), tokens, mask, ridge=0.0)
  with pytest.raises(ValueError, match="shared_prefix="):
    M.refit_cut(config, params, (0, 2), tokens, mask, shared_prefix=5)
