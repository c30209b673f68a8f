"""Model configuration: one dataclass covers Llama, Llama-3, Qwen2/2.5, Qwen3 and SmolLM2.

Families differ only in these fields; the module in `transformer.py` is written once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a causal decoder. Frozen and hashable: it is a static jit argument."""

  vocab_size: int  # number of token embeddings (rows of the embedding table)
  hidden_size: int  # residual stream width d
  intermediate_size: int  # SwiGLU hidden width
  num_layers: int  # decoder blocks
  num_heads: int  # query heads
  num_kv_heads: int  # key/value heads (grouped-query attention when < num_heads)
  head_dim: int  # per-head width (Qwen3 sets it explicitly; else hidden_size // num_heads)
  rope_theta: float = 10_000.0  # RoPE base frequency
  # RoPE scaling as a sorted tuple of (key, value) pairs (hashable), e.g. Llama-3's
  # (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
  #  ("original_max_position_embeddings", 8192), ("rope_type", "llama3")).
  rope_scaling: tuple | None = None
  rms_norm_eps: float = 1e-6  # RMSNorm epsilon
  tie_word_embeddings: bool = False  # lm head shares the embedding table
  attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
  qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
  max_position_embeddings: int = 4096  # longest sequence the model was trained for
  # Logits keep only the first `output_vocab` rows (0 = all). Families pad their embedding
  # tables differently (Qwen2.5-7B: 152,064 rows, 1.5B: 151,936, same tokenizer), so a
  # teacher and student compare distributions over the shared rows.
  output_vocab: int = 0
  architecture: str = "LlamaForCausalLM"  # Hugging Face architecture name, kept for saving
  dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"
  # storage dtype of the parameters (`init_params`, `cmdp.sharding.shard_params`): float32
  # master weights for what trains; a frozen teacher may be stored in bfloat16
  param_dtype: str = "float32"
  remat: bool = False  # rematerialise each block in the backward pass (saves activation memory)

  def __post_init__(self):
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in ("float32", "bfloat16"):
        raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: use 'float32' or "
                         "'bfloat16'.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.num_kv_heads}.")
    if self.architecture not in SUPPORTED_ARCHITECTURES:
      raise ValueError(
          f"Unsupported architecture {self.architecture!r}; supported: {SUPPORTED_ARCHITECTURES}.")

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds a config from a Hugging Face `config.json` dict."""
    archs = hf.get("architectures") or [_ARCH_BY_MODEL_TYPE.get(hf.get("model_type"), "?")]
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
      raise ValueError(
          f"config.json architectures={archs}: unsupported architecture {arch!r}. "
          f"Supported: {SUPPORTED_ARCHITECTURES}.")
    num_heads = hf["num_attention_heads"]
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters")
    rope_theta = hf.get("rope_theta")
    if isinstance(scaling, Mapping):
      rope_theta = rope_theta or scaling.get("rope_theta")
      kind = scaling.get("rope_type", scaling.get("type", "default"))
      if kind == "default":
        scaling = None
      elif kind != "llama3":
        raise ValueError(
            f"config.json rope_scaling type {kind!r} is not supported (only 'llama3').")
      else:
        scaling = tuple(sorted((k, v) for k, v in scaling.items() if k != "rope_theta"))
    kw = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        rope_theta=float(rope_theta or 10_000.0),
        rope_scaling=scaling or None,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", arch == "Qwen2ForCausalLM")),
        qk_norm=arch == "Qwen3ForCausalLM",
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        architecture=arch,
    )
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self) -> dict[str, Any]:
    """The Hugging Face `config.json` dict for this config."""
    model_type = {v: k for k, v in _ARCH_BY_MODEL_TYPE.items()}[self.architecture]
    out = dict(
        architectures=[self.architecture],
        model_type=model_type,
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads,
        head_dim=self.head_dim,
        rope_theta=self.rope_theta,
        rope_scaling=self.rope_scaling_dict,
        rms_norm_eps=self.rms_norm_eps,
        tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings,
        hidden_act="silu",
        torch_dtype="float32",
    )
    if self.architecture == "LlamaForCausalLM":
      out["attention_bias"] = self.attention_bias
      out["mlp_bias"] = False
    if self.architecture == "Qwen3ForCausalLM":
      out["attention_bias"] = False
    return out


_ARCH_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
