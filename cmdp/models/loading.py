"""Loading pretrained weights: Hugging Face directories, hub ids (local cache only), GGUF files.

    config, params, tokenizer = load_pretrained("Qwen/Qwen2.5-Math-1.5B")   # from the HF cache
    config, params, tokenizer = load_pretrained("/models/my-checkpoint")     # a directory
    config, params, tokenizer = load_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")

Weights become the float32 parameter tree of `cmdp/models/transformer.py`: a Hugging Face
weight `[out, in]` becomes a kernel `[in, out]`, and per-layer tensors are stacked on a new
leading axis `[L, ...]`. Each stacked parameter is built on the host from one tensor at a time,
moved to the device and freed before the next, so loading never holds the whole model twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable

import gguf
import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
import safetensors

from cmdp.models import tokenizer as tokenizer_lib
from cmdp.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from cmdp.models.transformer import init_params


class CheckpointError(ValueError):
  """A checkpoint does not fit its config: a tensor is missing or has the wrong shape."""


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """One leaf of the parameter tree and where it lives in the checkpoint formats.

  path: keys into the parameter tree, e.g. ("layers", "self_attn", "q_proj", "kernel").
  shape: its shape in the tree (with the leading `[L]` for per-layer parameters).
  hf_name / gguf_name: tensor names; per-layer ones contain `{i}` for the layer index.
  transpose: the checkpoint stores it as `[out, in]` (the tree's kernel is `[in, out]`).
  """
  path: tuple[str, ...]
  shape: tuple[int, ...]
  hf_name: str
  gguf_name: str
  transpose: bool

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf_name

  @property
  def tensor_shape(self) -> tuple[int, ...]:
    """Shape of one checkpoint tensor (one layer's, `[out, in]` for kernels)."""
    shape = self.shape[1:] if self.per_layer else self.shape
    return tuple(reversed(shape)) if self.transpose else tuple(shape)


# (tree path, Hugging Face name, GGUF name, stored [out, in]). Entries absent from a config's
# tree (biases, q/k norms, lm_head when tied) are skipped by `param_specs`.
_NAMES = (
    (("embed_tokens", "embedding"), "model.embed_tokens.weight", "token_embd.weight", False),
    (("norm", "scale"), "model.norm.weight", "output_norm.weight", False),
    (("lm_head", "kernel"), "lm_head.weight", "output.weight", True),
) + tuple(
    (("layers",) + path, "model.layers.{i}." + hf, "blk.{i}." + gg, t)
    for path, hf, gg, t in (
        (("input_layernorm", "scale"), "input_layernorm.weight", "attn_norm.weight", False),
        (("self_attn", "q_proj", "kernel"), "self_attn.q_proj.weight", "attn_q.weight", True),
        (("self_attn", "k_proj", "kernel"), "self_attn.k_proj.weight", "attn_k.weight", True),
        (("self_attn", "v_proj", "kernel"), "self_attn.v_proj.weight", "attn_v.weight", True),
        (("self_attn", "q_proj", "bias"), "self_attn.q_proj.bias", "attn_q.bias", False),
        (("self_attn", "k_proj", "bias"), "self_attn.k_proj.bias", "attn_k.bias", False),
        (("self_attn", "v_proj", "bias"), "self_attn.v_proj.bias", "attn_v.bias", False),
        (("self_attn", "q_norm", "scale"), "self_attn.q_norm.weight", "attn_q_norm.weight", False),
        (("self_attn", "k_norm", "scale"), "self_attn.k_norm.weight", "attn_k_norm.weight", False),
        (("self_attn", "o_proj", "kernel"), "self_attn.o_proj.weight", "attn_output.weight", True),
        (("post_attention_layernorm", "scale"), "post_attention_layernorm.weight",
         "ffn_norm.weight", False),
        (("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", "ffn_gate.weight", True),
        (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", "ffn_up.weight", True),
        (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", "ffn_down.weight", True),
    ))


def param_specs(config: ModelConfig) -> list[ParamSpec]:
  """Every leaf of `config`'s parameter tree with its checkpoint names, in `_NAMES` order."""
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  specs = []
  for path, hf, gg, transpose in _NAMES:
    node = shapes
    for key in path:
      node = node.get(key) if isinstance(node, dict) else None
    if node is not None:
      specs.append(ParamSpec(path, tuple(node.shape), hf, gg, transpose))
  n_leaves = len(jax.tree_util.tree_leaves(shapes))
  if len(specs) != n_leaves:  # the tree grew a parameter this table does not name
    raise AssertionError(f"param_specs names {len(specs)} of {n_leaves} parameters.")
  return specs


def assemble_params(config: ModelConfig, read: Callable[[str], np.ndarray],
                    name_of: Callable[[ParamSpec], str], where: str) -> dict:
  """Builds the parameter tree tensor by tensor.

  Args:
    config: the model's config; fixes which tensors are needed and their shapes.
    read: checkpoint tensor name -> float32 numpy array as stored (`[out, in]` for kernels).
      Raises KeyError for a name the checkpoint lacks.
    name_of: `ParamSpec` -> its (possibly `{i}`-templated) name in this checkpoint format.
    where: the checkpoint's description for error messages (a path).

  Returns:
    The nested dict of float32 `jax.Array`s documented in `transformer.py`.

  Raises:
    CheckpointError: a tensor is missing or its shape does not match the config.
  """
  params: dict = {}
  for spec in param_specs(config):
    names = ([name_of(spec).format(i=i) for i in range(config.num_layers)] if spec.per_layer
             else [name_of(spec)])
    host = np.empty(spec.shape if spec.per_layer else (1,) + spec.shape, np.float32)
    for i, name in enumerate(names):
      try:
        tensor = read(name)
      except KeyError:
        raise CheckpointError(
            f"Tensor {name!r} is missing from {where} (needed for parameter "
            f"{'/'.join(spec.path)} of a {config.architecture} with this config).") from None
      if tuple(tensor.shape) != spec.tensor_shape:
        raise CheckpointError(
            f"Tensor {name!r} in {where} has shape {tuple(tensor.shape)}, but the config "
            f"expects {spec.tensor_shape}. The config and the weights disagree.")
      host[i] = tensor.T if spec.transpose else tensor
      del tensor
    node = params
    for key in spec.path[:-1]:
      node = node.setdefault(key, {})
    node[spec.path[-1]] = jnp.asarray(host if spec.per_layer else host[0])
    del host
  return params


def resolve_path(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
  """A local directory or `.gguf` file for `path`, looking hub ids up in the local HF cache only.

  Raises:
    FileNotFoundError: `path` does not exist and is not a model in the local cache.
  """
  text = os.fspath(path)
  local = os.path.expanduser(text)
  if os.path.exists(local):
    return local
  expected = ("a Hugging Face model directory (config.json + model.safetensors or "
              "model.safetensors.index.json), a .gguf file, or a hub id such as "
              "'Qwen/Qwen2.5-Math-1.5B' present in the local Hugging Face cache")
  if text.endswith(".gguf") or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):
    raise FileNotFoundError(f"No such file or directory: {text!r}. Expected {expected}.")
  try:
    return huggingface_hub.snapshot_download(text, local_files_only=True, cache_dir=cache_dir)
  except (huggingface_hub.errors.LocalEntryNotFoundError,
          huggingface_hub.errors.HFValidationError) as err:
    cache = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
    raise FileNotFoundError(
        f"{text!r} is not a local path and not in the local Hugging Face cache ({cache}); "
        f"nothing is downloaded at run time. On a machine with network run "
        f"`hf download {text}` (or `huggingface-cli download {text}`) and copy the cache "
        f"there (or set HF_HUB_CACHE), or pass a local directory. Expected {expected}.") from err


def load_pretrained(path: str | os.PathLike, *, dtype: str = "float32",
                    cache_dir: str | os.PathLike | None = None):
  """Loads a pretrained causal LM: config, float32 parameters and tokenizer.

  Args:
    path: one of
      * a Hugging Face model directory: `config.json` plus `model.safetensors` or a sharded
        `model.safetensors.index.json` (tensors in F32, F16 or BF16);
      * a hub id like `"Qwen/Qwen2.5-Math-1.5B"`, resolved only through the local Hugging Face
        cache (never downloaded);
      * a `.gguf` file (llama / qwen2 / qwen3 architectures, any quantisation the `gguf`
        package dequantises), e.g. SmolLM2's.
    dtype: compute dtype stored in the returned config ("float32" or "bfloat16"); the
      parameters are float32 either way.
    cache_dir: Hugging Face cache to look hub ids up in (default: `HF_HUB_CACHE`).

  Returns:
    `(config, params, tokenizer)`: a `ModelConfig`; the parameter tree of `transformer.py`
    (float32 `jax.Array`s, per-layer ones stacked `[L, ...]`, kernels `[in, out]`); a
    `transformers.PreTrainedTokenizerFast` (None for a directory without tokenizer files).

  Raises:
    FileNotFoundError: the path, `config.json` or the weights file is missing.
    ValueError: unsupported architecture, rope scaling or tokenizer (the message lists what
      is supported).
    CheckpointError: a tensor is missing or its shape disagrees with the config.
  """
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"load_pretrained(dtype={dtype!r}): use 'float32' or 'bfloat16'.")
  local = resolve_path(path, cache_dir)
  if os.path.isfile(local):
    if not local.endswith(".gguf"):
      raise FileNotFoundError(
          f"{local!r} is a file but not a .gguf file; pass a .gguf file or a Hugging Face model "
          f"directory (config.json + model.safetensors).")
    return load_gguf(local, dtype=dtype)
  return load_hf_directory(local, dtype=dtype)


def _dir_error(path: str, what: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"{what} in {path!r}: expected a Hugging Face model directory with config.json and "
      f"model.safetensors (or a sharded model.safetensors.index.json).")


def load_hf_directory(path: str, *, dtype: str = "float32"):
  """`load_pretrained` for a local Hugging Face directory (see there)."""
  config_file = os.path.join(path, "config.json")
  if not os.path.isfile(config_file):
    raise _dir_error(path, "No config.json")
  with open(config_file) as f:
    hf = json.load(f)
  try:
    config = ModelConfig.from_hf_dict(hf, dtype=dtype)
  except ValueError as err:
    raise ValueError(f"{config_file}: {err}") from err

  index_file = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(index_file):
    with open(index_file) as f:
      weight_map = json.load(f)["weight_map"]
    where = index_file
  elif os.path.isfile(single):
    weight_map = None
    where = single
  else:
    found = sorted(os.listdir(path))
    hint = (" (found PyTorch .bin weights: re-save them as safetensors)"
            if any(n.endswith(".bin") for n in found) else "")
    raise _dir_error(path, f"No model.safetensors or model.safetensors.index.json{hint}; "
                     f"files there: {found}")

  handles: dict[str, dict] = {}  # shard file -> {"numpy": handle, "names": set, "flax": handle}

  def read(name: str) -> np.ndarray:
    shard = single if weight_map is None else os.path.join(path, weight_map[name])
    if shard not in handles:
      if not os.path.isfile(shard):
        raise FileNotFoundError(f"Shard {shard!r} listed in {where} is missing.")
      handle = safetensors.safe_open(shard, framework="numpy")
      handles[shard] = {"numpy": handle, "names": set(handle.keys()), "flax": None}
    h = handles[shard]
    if name not in h["names"]:
      raise KeyError(name)
    if h["numpy"].get_slice(name).get_dtype() in ("F32", "F16", "F64"):
      return h["numpy"].get_tensor(name).astype(np.float32, copy=False)
    if h["flax"] is None:  # numpy has no bfloat16/float8: read those through JAX
      h["flax"] = safetensors.safe_open(shard, framework="flax")
    return np.asarray(h["flax"].get_tensor(name).astype(jnp.float32))

  params = assemble_params(config, read, lambda s: s.hf_name, where)
  handles.clear()
  return config, params, tokenizer_lib.tokenizer_from_directory(path)


_GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                       "qwen3": "Qwen3ForCausalLM"}


def gguf_config(reader: gguf.GGUFReader, *, dtype: str = "float32", where: str = "GGUF") -> ModelConfig:
  """The `ModelConfig` described by a GGUF file's metadata (`{arch}.*` keys)."""
  arch = tokenizer_lib.gguf_field(reader, "general.architecture", None)
  if arch not in _GGUF_ARCHITECTURES:
    raise ValueError(
        f"{where}: unsupported GGUF architecture general.architecture={arch!r}; supported: "
        f"{sorted(_GGUF_ARCHITECTURES)} (Hugging Face {SUPPORTED_ARCHITECTURES}).")
  names = {t.name for t in reader.tensors}
  scaling = tokenizer_lib.gguf_field(reader, f"{arch}.rope.scaling.type", "none")
  if scaling != "none" or "rope_freqs.weight" in names:
    raise ValueError(
        f"{where}: GGUF RoPE scaling ({arch}.rope.scaling.type={scaling!r}, rope_freqs tensor "
        f"{'present' if 'rope_freqs.weight' in names else 'absent'}) is not supported; load the "
        f"Hugging Face directory instead (llama3 scaling is supported there).")

  def key(name, default=KeyError):
    try:
      return tokenizer_lib.gguf_field(reader, f"{arch}.{name}", default)
    except KeyError:
      raise ValueError(f"{where}: GGUF metadata key {arch}.{name} is missing.") from None

  heads = int(key("attention.head_count"))
  hidden = int(key("embedding_length"))
  vocab = key("vocab_size", None)
  if vocab is None:
    vocab = len(tokenizer_lib.gguf_field(reader, "tokenizer.ggml.tokens"))
  hf = dict(
      architectures=[_GGUF_ARCHITECTURES[arch]],
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(key("feed_forward_length")),
      num_hidden_layers=int(key("block_count")),
      num_attention_heads=heads,
      num_key_value_heads=int(key("attention.head_count_kv", heads)),
      head_dim=int(key("attention.key_length", hidden // heads)),
      rope_theta=_f32(key("rope.freq_base", 10_000.0)),
      rms_norm_eps=_f32(key("attention.layer_norm_rms_epsilon")),
      tie_word_embeddings="output.weight" not in names,
      attention_bias="blk.0.attn_q.bias" in names,
      max_position_embeddings=int(key("context_length", 4096)),
  )
  return ModelConfig.from_hf_dict(hf, dtype=dtype)


def _f32(value) -> float:
  """A GGUF float32 as its shortest decimal (9.999999747e-06 -> 1e-05), as config.json has it."""
  return float(str(np.float32(value)))


def unpermute_llama_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's per-head row interleave of a q/k projection `[out, in]` (or bias `[out]`).

  llama.cpp's converter writes rows of each head as (r0, r_h, r1, r_h+1, ...) for its
  interleaved RoPE; Hugging Face keeps the halves split (r0..r_h-1, r_h..). This restores the
  Hugging Face order. `n_head` is `num_heads` for q and `num_kv_heads` for k.
  """
  out = w.shape[0]
  return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str, *, dtype: str = "float32"):
  """`load_pretrained` for a `.gguf` file (see there): dequantised float32 weights."""
  reader = gguf.GGUFReader(path)
  config = gguf_config(reader, dtype=dtype, where=path)
  tensors = {t.name: t for t in reader.tensors}
  llama = tokenizer_lib.gguf_field(reader, "general.architecture") == "llama"

  def read(name: str) -> np.ndarray:
    t = tensors[name]  # KeyError when missing
    data = t.data.view(np.ndarray)  # a plain view: numpy's memmap subclass slows dequantising 5x
    w = gguf.quants.dequantize(data, t.tensor_type).astype(np.float32, copy=False)
    w = w.reshape([int(n) for n in reversed(t.shape)])  # GGUF dims are [in, out]
    if llama and name.split(".")[-2] in ("attn_q", "attn_k"):
      w = unpermute_llama_qk(w, config.num_heads if ".attn_q." in name else config.num_kv_heads)
    return w

  params = assemble_params(config, read, lambda s: s.gguf_name, path)
  return config, params, tokenizer_lib.tokenizer_from_gguf(reader)
