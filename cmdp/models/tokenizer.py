"""Tokenizers: a Hugging Face directory's own, or one rebuilt from a GGUF file's metadata.

Either way the caller gets a `transformers.PreTrainedTokenizerFast` (in transformers 5 an alias
of `TokenizersBackend`), so `encode`, `decode`, `apply_chat_template`, `eos_token_id` and
`pad_token_id` work the same for every model.

A GGUF file stores a byte-level BPE tokenizer as metadata under llama.cpp's names
(`tokenizer.ggml.tokens`, `.merges`, `.token_type`, `.bos_token_id`, ...). We rebuild it with
`tokenizers`: the BPE model from the tokens and merges, the pre-tokenizer that
`tokenizer.ggml.pre` names (SmolLM2's `smollm` splits every digit on its own), control tokens
(token_type 3) as special tokens, and the chat template from `tokenizer.chat_template`.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import gguf
import numpy as np
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

# llama.cpp token types (gguf.TokenType): 3 = CONTROL (special), 4 = USER_DEFINED (added, whole).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer regexes of the llama.cpp `tokenizer.ggml.pre` types we support, as written in
# the models' own `tokenizer.json` files. `None`: GPT-2's built-in ByteLevel regex.
_GPT2 = None
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre type -> (split digits one by one first, split regex, BPE ignore_merges)
_PRE_TOKENIZERS = {
    "default": (False, _GPT2, False),
    "gpt-2": (False, _GPT2, False),
    "smollm": (True, _GPT2, False),  # SmolLM / SmolLM2: Digits(individual) + ByteLevel
    "starcoder": (True, _GPT2, False),
    "refact": (True, _GPT2, False),
    "llama-bpe": (False, _LLAMA3, True),  # Llama 3
    "llama3": (False, _LLAMA3, True),
    "qwen2": (False, _QWEN2, False),
    "deepseek-r1-qwen": (False, _QWEN2, False),
}


def gguf_field(reader: gguf.GGUFReader, key: str, default: Any = KeyError) -> Any:
  """The value of GGUF metadata `key` (str, number, bool or list), or `default` when absent."""
  field = reader.fields.get(key)
  if field is None:
    if default is KeyError:
      raise KeyError(f"GGUF metadata has no {key!r}.")
    return default
  return field.contents()


def tokenizer_from_gguf(reader_or_path: gguf.GGUFReader | str | os.PathLike
                        ) -> transformers.PreTrainedTokenizerFast:
  """Rebuilds the byte-level BPE tokenizer a GGUF file describes.

  Args:
    reader_or_path: an open `gguf.GGUFReader` or the path of a `.gguf` file.

  Returns:
    A `PreTrainedTokenizerFast` with the file's vocabulary (ids as in the file), merges,
    pre-tokenizer, special tokens (bos/eos/unk/pad from metadata, control tokens kept whole and
    skipped by `decode(..., skip_special_tokens=True)`) and chat template.

  Raises:
    ValueError: the file's tokenizer is not byte-level BPE (`tokenizer.ggml.model != 'gpt2'`),
      or its pre-tokenizer type is not one we know.
  """
  reader = (reader_or_path if isinstance(reader_or_path, gguf.GGUFReader)
            else gguf.GGUFReader(os.fspath(reader_or_path)))
  kind = gguf_field(reader, "tokenizer.ggml.model", None)
  if kind != "gpt2":
    raise ValueError(
        f"GGUF tokenizer.ggml.model={kind!r}: only byte-level BPE ('gpt2') tokenizers can be "
        f"rebuilt. Convert the model to a Hugging Face directory to use its own tokenizer.")
  pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
  if pre not in _PRE_TOKENIZERS:
    raise ValueError(
        f"GGUF tokenizer.ggml.pre={pre!r} is not supported; supported: {sorted(_PRE_TOKENIZERS)}.")
  split_digits, regex, ignore_merges = _PRE_TOKENIZERS[pre]

  tokens = gguf_field(reader, "tokenizer.ggml.tokens")
  token_types = gguf_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
  merges = [tuple(m.split(" ", 1)) for m in gguf_field(reader, "tokenizer.ggml.merges")]
  vocab = {tok: i for i, tok in enumerate(tokens)}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges,
                             fuse_unk=False, byte_fallback=False))
  steps = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
  if regex is None:
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
  else:
    steps += [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
  tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, token_types) if ty == _CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t, ty in zip(tokens, token_types) if ty == _USER_DEFINED])

  def special(key: str) -> str | None:
    idx = gguf_field(reader, f"tokenizer.ggml.{key}_token_id", None)
    return None if idx is None else tokens[int(idx)]

  bos = special("bos")
  add_bos = bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False)) and bos is not None
  add_eos = bool(gguf_field(reader, "tokenizer.ggml.add_eos_token", False))
  eos = special("eos")
  single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
  pair = single + " " + single.replace("$A:0", "$B:1").replace(":0", ":1")
  used = [t for t, on in ((bos, add_bos), (eos, add_eos)) if on]
  tok.post_processor = processors.TemplateProcessing(
      single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in dict.fromkeys(used)])

  kwargs = {name: special(key) for name, key in
            (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
             ("pad_token", "padding"))}
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  template = gguf_field(reader, "tokenizer.chat_template", None)
  if template is not None:
    kwargs["chat_template"] = template
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def tokenizer_from_directory(path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase | None:
  """`AutoTokenizer.from_pretrained(path)` when `path` holds tokenizer files, else None."""
  names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
  if not any(os.path.exists(os.path.join(path, n)) for n in names):
    return None
  return transformers.AutoTokenizer.from_pretrained(os.fspath(path))


def special_token_ids(tokenizer: transformers.PreTrainedTokenizerBase | None) -> Mapping[str, int]:
  """`{bos,eos,pad}_token_id` of `tokenizer` that are set (for config/generation files)."""
  if tokenizer is None:
    return {}
  ids = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
  return {k: int(v) for k, v in ids.items() if isinstance(v, (int, np.integer))}
