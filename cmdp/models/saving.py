"""Saving a model as a Hugging Face directory that PyTorch `transformers` and `load_pretrained` read.

    save_pretrained("out/student", config, params, tokenizer)
    # transformers.AutoModelForCausalLM.from_pretrained("out/student") works, and so does
    # cmdp.models.load_pretrained("out/student").
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import safetensors.numpy
import transformers

from cmdp.models import tokenizer as tokenizer_lib
from cmdp.models.config import ModelConfig
from cmdp.models.loading import CheckpointError, param_specs

INDEX_FILE = "model.safetensors.index.json"


def _leaf(params: dict, path: tuple[str, ...]):
  node = params
  for key in path:
    if not isinstance(node, dict) or key not in node:
      raise CheckpointError(
          f"params has no {'/'.join(path)}, which a {ModelConfig.__name__} with this config needs; "
          f"pass the tree `load_pretrained`/`init_params` builds for this config.")
    node = node[key]
  return node


def save_pretrained(path: str | os.PathLike, config: ModelConfig, params: dict,
                    tokenizer=None, *, max_shard_bytes: int = 5_000_000_000) -> None:
  """Writes a Hugging Face model directory.

  Files: `config.json` (`config.to_hf_dict()` plus the tokenizer's bos/eos/pad ids),
  `generation_config.json` (bos/eos/pad ids), float32 safetensors weights under Hugging Face
  names in `[out, in]` layout (`model.safetensors`, or `model-0000k-of-0000n.safetensors` shards
  plus `model.safetensors.index.json` when larger than `max_shard_bytes`; a tied lm head is not
  written twice) and, when given, the tokenizer (`tokenizer.save_pretrained`). Weight files left
  in `path` by an earlier save are removed first.

  Args:
    path: directory to write (created if needed).
    config: the model's config.
    params: its parameter tree (see `transformer.py`), float32 or bfloat16 leaves.
    tokenizer: a `transformers` tokenizer, or None to write no tokenizer files.
    max_shard_bytes: largest size of one weights file, in bytes.

  Raises:
    CheckpointError: `params` lacks a parameter the config needs or has a wrong shape.
  """
  path = os.fspath(path)
  specs = param_specs(config)
  leaves = {}
  for spec in specs:
    leaf = _leaf(params, spec.path)
    if tuple(leaf.shape) != spec.shape:
      raise CheckpointError(
          f"params/{'/'.join(spec.path)} has shape {tuple(leaf.shape)}, but the config expects "
          f"{spec.shape}.")
    leaves[spec.path] = leaf

  # (HF name, spec, layer or None) in a stable order, grouped into shards by size.
  entries = [(spec.hf_name.format(i=i), spec, i) for spec in specs
             for i in (range(config.num_layers) if spec.per_layer else [None])]
  shards: list[list] = [[]]
  size = 0
  for entry in entries:
    nbytes = 4 * int(np.prod(entry[1].tensor_shape))
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += nbytes

  os.makedirs(path, exist_ok=True)
  for old in glob.glob(os.path.join(path, "model*.safetensors")) + [os.path.join(path, INDEX_FILE)]:
    if os.path.exists(old):
      os.remove(old)
  weight_map = {}
  total = 0
  for k, shard in enumerate(shards):
    file = ("model.safetensors" if len(shards) == 1
            else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
    tensors = {}
    for name, spec, layer in shard:
      value = leaves[spec.path] if layer is None else leaves[spec.path][layer]
      value = np.asarray(value, dtype=np.float32)
      tensors[name] = np.ascontiguousarray(value.T if spec.transpose else value)
      weight_map[name] = file
      total += tensors[name].nbytes
    safetensors.numpy.save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    del tensors
  if len(shards) > 1:
    with open(os.path.join(path, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

  ids = dict(tokenizer_lib.special_token_ids(tokenizer))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({**config.to_hf_dict(), **ids}, f, indent=2)
  transformers.GenerationConfig(**ids).save_pretrained(path)
  if tokenizer is not None:
    tokenizer.save_pretrained(path)
