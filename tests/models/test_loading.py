"""load_pretrained / save_pretrained against Hugging Face PyTorch models (the reference).

Tiny random Llama (Llama-3 RoPE scaling, untied), Qwen2 (q/k/v bias) and Qwen3 (q/k norm,
explicit head_dim, tied) models are built in torch, saved, loaded with `load_pretrained` and
run with `cmdp.models.forward`; logits must equal torch's within 1e-4 (float32).
"""
import copy
import json
import os
import shutil

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

import cmdp.models as M
from cmdp.models import loading

from . import hf_tiny

TOL = 1e-4
_forward = jax.jit(M.forward, static_argnums=0)
_TEXTS = ["What is 2+3? The answer is 5.", "  Natalia sold 48 clips\n\nin  April!",
          "héllo wörld <|im_end|> 1234567", "def add(a, b):\n    return a + b\n"]


def _tokens(seed=0, shape=(3, 8)):
  return np.random.RandomState(seed).randint(0, hf_tiny.VOCAB, shape).astype(np.int32)


def _ours(config, params, tokens, mask=None):
  mask = np.ones(tokens.shape, bool) if mask is None else mask
  return np.asarray(_forward(config, params, jnp.asarray(tokens), jnp.asarray(mask)))


def _assert_close(ours, ref, what):
  err = float(np.abs(ours - ref).max())
  assert err < TOL, f"{what}: max |ours - torch| = {err:.2e} >= {TOL}"


def _check_against_torch(config, params, model):
  """Full rows, then left-padded rows compared on their real tokens with torch on the row alone."""
  tokens = _tokens()
  _assert_close(_ours(config, params, tokens), hf_tiny.torch_logits(model, tokens), "full rows")
  lengths = [8, 5, 2]
  mask = np.arange(8)[None, :] >= 8 - np.array(lengths)[:, None]  # left padding
  padded = np.where(mask, tokens, 2)
  ours = _ours(config, params, padded, mask)
  for row, n in enumerate(lengths):
    ref = hf_tiny.torch_logits(model, tokens[row:row + 1, 8 - n:])[0]
    _assert_close(ours[row, 8 - n:], ref, f"left-padded row {row} ({n} real tokens)")


def _save_torch(model, path, tokenizer=None, **kw):
  model.save_pretrained(path, **kw)
  if tokenizer is not None:
    tokenizer.save_pretrained(path)
  return str(path)


@pytest.fixture(scope="module")
def tokenizer():
  return hf_tiny.hf_tokenizer()


@pytest.fixture(scope="module")
def torch_models():
  return {name: hf_tiny.random_torch_model(name, seed=i) for i, name in
          enumerate(("llama", "qwen2", "qwen3", "llama_plain"))}


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_hf_directory_matches_torch(name, torch_models, tokenizer, tmp_path):
  model = torch_models[name]
  config, params, tok = M.load_pretrained(_save_torch(model, tmp_path, tokenizer))
  hc = model.config
  assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
          config.head_dim, config.vocab_size) == (
              hc.num_hidden_layers, hc.hidden_size, hc.num_attention_heads,
              hc.num_key_value_heads, hf_tiny.head_dim(hc), hc.vocab_size)
  assert config.tie_word_embeddings == (name == "qwen3")
  assert config.attention_bias == (name == "qwen2")
  assert config.qk_norm == (name == "qwen3")
  assert ("lm_head" in params) == (name != "qwen3")
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
  _check_against_torch(config, params, model)
  for text in _TEXTS:
    assert tok.encode(text) == tokenizer.encode(text)
  assert (tok.eos_token_id, tok.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_sharded_and_bfloat16_checkpoints(torch_models, tmp_path):
  model = torch_models["llama"]
  sharded = _save_torch(model, tmp_path / "sharded", max_shard_size="20KB")
  index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
  assert len(set(index["weight_map"].values())) > 1
  config, params, tok = M.load_pretrained(sharded)
  assert tok is None  # no tokenizer files were saved
  _check_against_torch(config, params, model)

  bf16 = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(model.config))
  bf16.load_state_dict(model.state_dict())
  bf16 = bf16.to(torch.bfloat16)
  config, params, _ = M.load_pretrained(_save_torch(bf16, tmp_path / "bf16"), dtype="bfloat16")
  assert config.dtype == "bfloat16"
  # The reference: a float32 torch model holding the bf16-rounded weights (a fresh model, so its
  # RoPE buffers stay float32).
  rounded = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(model.config)).float().eval()
  rounded.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
  q = rounded.model.layers[1].self_attn.q_proj.weight.detach().numpy()
  np.testing.assert_array_equal(np.asarray(params["layers"]["self_attn"]["q_proj"]["kernel"][1]), q.T)
  _check_against_torch(config.replace(dtype="float32"), params, rounded)


@pytest.mark.parametrize("name,shard_bytes", [("llama", 30_000), ("qwen2", 10**9), ("qwen3", 10**9)])
def test_save_pretrained_round_trip(name, shard_bytes, torch_models, tokenizer, tmp_path):
  model = torch_models[name]
  config, params, tok = M.load_pretrained(_save_torch(model, tmp_path / "hf", tokenizer))
  out = tmp_path / "ours"
  M.save_pretrained(out, config, params, tok, max_shard_bytes=shard_bytes)
  files = sorted(os.listdir(out))
  assert ("model.safetensors.index.json" in files) == (shard_bytes < 10**9)
  if name == "qwen3":  # tied: the lm head is not written twice
    names = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  tokens = _tokens(seed=1)
  _assert_close(hf_tiny.torch_logits(reloaded, tokens), hf_tiny.torch_logits(model, tokens),
                "torch model loaded from our save_pretrained")
  gen = json.load(open(os.path.join(out, "generation_config.json")))
  assert gen["eos_token_id"] == tokenizer.eos_token_id

  config2, params2, tok2 = M.load_pretrained(out)
  assert config2 == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
  for text in _TEXTS:
    assert tok2.encode(text) == tokenizer.encode(text)
    assert tok2.decode(tok2.encode(text)) == text


def test_hub_id_resolved_from_local_cache_only(torch_models, tokenizer, tmp_path):
  cache = tmp_path / "cache"
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = cache / "models--tiny-org--tiny-llama"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  _save_torch(torch_models["llama"], repo / "snapshots" / commit, tokenizer)
  config, params, tok = M.load_pretrained("tiny-org/tiny-llama", cache_dir=cache)
  _check_against_torch(config, params, torch_models["llama"])
  assert tok.encode(_TEXTS[0]) == tokenizer.encode(_TEXTS[0])

  with pytest.raises(FileNotFoundError) as err:
    M.load_pretrained("Qwen/Qwen2.5-Math-1.5B", cache_dir=cache)
  msg = str(err.value)
  assert "not in the local Hugging Face cache" in msg and str(cache) in msg
  assert "hf download Qwen/Qwen2.5-Math-1.5B" in msg


@pytest.mark.parametrize("name", ["llama_plain", "qwen2", "qwen3"])
def test_gguf_matches_torch(name, torch_models, tmp_path):
  model = torch_models[name]
  bpe = hf_tiny.train_bpe()
  path = str(tmp_path / "tiny.gguf")
  hf_tiny.write_gguf(model, path, bpe)
  config, params, tok = M.load_pretrained(path)
  expected = M.ModelConfig.from_hf_dict(
      {**model.config.to_dict(), "architectures": [type(model).__name__]})
  assert config == expected
  _check_against_torch(config, params, model)

  # The tokenizer rebuilt from GGUF metadata equals the `tokenizers` one it was written from.
  for text in _TEXTS:
    assert tok.encode(text) == bpe.encode(text).ids, text
    assert tok.decode(tok.encode(text)) == text
  vocab = bpe.get_vocab()
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
      vocab["<|im_start|>"], vocab["<|im_end|>"], vocab["<|im_end|>"])
  chat = [{"role": "user", "content": "What is 2+3?"}]
  rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
  assert rendered == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
  assert tok.encode(rendered)[:1] == [vocab["<|im_start|>"]]
  assert tok.decode(tok.encode(rendered), skip_special_tokens=True) == "user\nWhat is 2+3?\nassistant\n"


def test_unpermute_inverts_llama_cpp_permutation():
  w = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
  for heads in (1, 2, 3, 6):
    permuted = hf_tiny.llama_cpp_permute(w, heads)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(loading.unpermute_llama_qk(permuted, heads), w)
  bias = np.arange(12, dtype=np.float32)
  np.testing.assert_array_equal(loading.unpermute_llama_qk(hf_tiny.llama_cpp_permute(bias, 2), 2), bias)


def _broken_copy(torch_models, tmp_path, edit_config=None, drop=None):
  path = _save_torch(torch_models["llama"], tmp_path / "broken")
  if edit_config:
    config_file = os.path.join(path, "config.json")
    hf = json.load(open(config_file))
    hf.update(edit_config)
    json.dump(hf, open(config_file, "w"))
  if drop:
    file = os.path.join(path, "model.safetensors")
    tensors = safetensors.numpy.load_file(file)
    del tensors[drop]
    safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})
  return path


def test_errors_name_the_problem(torch_models, tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match="nowhere.*config.json"):
    M.load_pretrained(missing)
  with pytest.raises(FileNotFoundError, match="No such file.*model.gguf"):
    M.load_pretrained(tmp_path / "model.gguf")

  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="No config.json in .*empty"):
    M.load_pretrained(empty)
  shutil.copy(os.path.join(_broken_copy(torch_models, tmp_path), "config.json"), empty)
  with pytest.raises(FileNotFoundError, match="No model.safetensors or model.safetensors.index.json"):
    M.load_pretrained(empty)
  (empty / "weights.bin").write_bytes(b"\0")
  with pytest.raises(FileNotFoundError, match="not a .gguf file"):
    M.load_pretrained(empty / "weights.bin")

  path = _broken_copy(torch_models, tmp_path, edit_config={"architectures": ["GPT2LMHeadModel"]})
  with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'.*LlamaForCausalLM"):
    M.load_pretrained(path)

  path = _broken_copy(torch_models, tmp_path, edit_config={"intermediate_size": 96})
  with pytest.raises(M.CheckpointError) as err:
    M.load_pretrained(path)
  assert "'model.layers.0.mlp.gate_proj.weight'" in str(err.value)
  assert "shape (64, 32)" in str(err.value) and "expects (96, 32)" in str(err.value)

  path = _broken_copy(torch_models, tmp_path, drop="model.norm.weight")
  with pytest.raises(M.CheckpointError, match="'model.norm.weight' is missing from .*model.safetensors"):
    M.load_pretrained(path)

  config, params, _ = M.load_pretrained(_broken_copy(torch_models, tmp_path))
  params["layers"]["mlp"]["up_proj"]["kernel"] = params["layers"]["mlp"]["up_proj"]["kernel"][:, :, :5]
  with pytest.raises(M.CheckpointError, match="layers/mlp/up_proj/kernel has shape .2, 32, 5.*"
                     r"expects \(2, 32, 64\)"):
    M.save_pretrained(tmp_path / "out", config, params)
  del params["norm"]
  with pytest.raises(M.CheckpointError, match="params has no norm/scale"):
    M.save_pretrained(tmp_path / "out", config, params)


def test_gguf_errors(torch_models, tmp_path):
  path = str(tmp_path / "phi.gguf")
  hf_tiny.write_gguf(torch_models["llama_plain"], path, hf_tiny.train_bpe(), arch="phi3")
  with pytest.raises(ValueError, match="unsupported GGUF architecture.*'phi3'.*'llama'"):
    M.load_pretrained(path)

  path = str(tmp_path / "spm.gguf")
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_tokenizer_model("llama")
  writer.add_token_list(["<unk>", "a"])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match="tokenizer.ggml.model='llama'.*byte-level BPE"):
    M.tokenizer_from_gguf(path)
