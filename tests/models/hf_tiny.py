"""Tiny random Hugging Face PyTorch models, a tiny tokenizer and a GGUF writer, for tests.

Everything is built in-process (no downloads). The PyTorch models are the independent
reference our Flax decoder and loaders are checked against.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 320  # model vocabulary (>= the tiny tokenizer's size)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                 "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}")
_CORPUS = ["What is 2+3? The answer is 5.", "Natalia sold clips to 48 of her friends in April.",
           "the quick brown fox jumps over the lazy dog", "Weng earns $12 an hour for babysitting.",
           "def add(a, b):\n    return a + b\n"] * 4

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)
_LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=16, rope_theta=500_000.0)
HF_CONFIGS = {
    # Llama with Llama-3 RoPE scaling (both the smoothed and the scaled band are hit), untied.
    "llama": lambda: transformers.LlamaConfig(**_COMMON, rope_parameters=_LLAMA3_ROPE,
                                              tie_word_embeddings=False),
    # Llama without scaling (what GGUF files carry), untied.
    "llama_plain": lambda: transformers.LlamaConfig(**_COMMON, rope_theta=100_000.0,
                                                    tie_word_embeddings=False),
    # Qwen2: q/k/v biases, untied.
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, tie_word_embeddings=False),
    # Qwen3: q/k RMSNorm, explicit head_dim (heads * head_dim != hidden), tied embeddings.
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=16, tie_word_embeddings=True),
}


def head_dim(config) -> int:
  """Per-head width of a HF config (Qwen2 configs have no `head_dim` attribute)."""
  return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def random_torch_model(name: str, seed: int = 0,
                       num_layers: int | None = None) -> transformers.PreTrainedModel:
  """A float32 `*ForCausalLM` with weights ~ N(0, 0.1) (norm scales ~ 1 + N(0, 0.1)), eval
  mode; `num_layers` replaces the config's 2."""
  torch.manual_seed(seed)
  config = HF_CONFIGS[name]()
  if num_layers:
    config.num_hidden_layers = num_layers
  config._attn_implementation = "eager"
  model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      p.normal_(1.0 if "norm" in pname else 0.0, 0.1)
  return model


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  """float32 logits `[B, T, V]` of unpadded `tokens [B, T]`."""
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def train_bpe() -> Tokenizer:
  """A byte-level BPE (digits split one by one, like SmolLM2's) trained on a tiny corpus."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_CORPUS, trainer)
  return tok


def hf_tokenizer(tok: Tokenizer | None = None) -> transformers.PreTrainedTokenizerFast:
  """`train_bpe()` wrapped as a transformers tokenizer with eos/pad and a ChatML template."""
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok or train_bpe(), bos_token="<|im_start|>", eos_token="<|im_end|>",
      pad_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp `convert_hf_to_gguf.py`'s q/k row permutation (the one loaders must undo)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
               "self_attn.k_norm": "attn_k_norm", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
               "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(model, path: str, tok: Tokenizer, arch: str | None = None) -> None:
  """Writes `model` (a tiny HF Llama/Qwen2/Qwen3) as a float32 GGUF the way llama.cpp does.

  Tensor names and metadata follow llama.cpp's converter; for `llama` the q/k rows are permuted
  with `llama_cpp_permute`. The tokenizer is stored as `gpt2` byte-level BPE, `pre=smollm`.
  """
  c = model.config
  arch = arch or c.model_type
  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_key_length(head_dim(c))
  w.add_value_length(head_dim(c))
  w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  tokens = sorted(vocab, key=vocab.get)
  # Like llama.cpp's converter, pad the token list to the model's vocabulary with unused tokens.
  tokens += [f"[PAD{i}]" for i in range(len(tokens), c.vocab_size)]
  specials = {t["content"] for t in spec["added_tokens"]}
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(tokens)
  w.add_token_types([3 if t in specials else 5 if t.startswith("[PAD") else 1 for t in tokens])
  w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
  w.add_bos_token_id(vocab["<|im_start|>"])
  w.add_eos_token_id(vocab["<|im_end|>"])
  w.add_pad_token_id(vocab["<|im_end|>"])
  w.add_add_bos_token(False)
  w.add_chat_template(CHAT_TEMPLATE)
  for name, p in model.state_dict().items():
    a = p.detach().float().numpy()
    if name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    if name.startswith("model.layers."):
      _, _, i, rest = name.split(".", 3)
      module, kind = rest.rsplit(".", 1)
      gname = f"blk.{i}.{_GGUF_NAMES[module]}.{kind}"
      if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
        heads = c.num_attention_heads if "q_proj" in module else c.num_key_value_heads
        a = llama_cpp_permute(a, heads)
    else:
      gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
               "output_norm.weight", "lm_head.weight": "output.weight"}[name]
    w.add_tensor(gname, np.ascontiguousarray(a))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
