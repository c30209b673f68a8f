"""Architecture presets: published model shapes with no weights attached.

A config names one as `teacher.path = "preset:qwen2.5-math-7b"`. The planner
(`python -m cmdp.plan`) sizes a run from a preset without any file; for training, a preset
means "random init with this architecture". Hub ids of the same models (e.g.
`Qwen/Qwen2.5-Math-7B`) map to their preset, so the planner also sizes a config that names
the real checkpoint when its files are not on this machine.

Values are those of each model's published `config.json`.
"""
from __future__ import annotations

from cmdp.models.config import ModelConfig

PREFIX = "preset:"

_LLAMA3_8B_ROPE = (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                   ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))
_LLAMA3_2_ROPE = (("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                  ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))

PRESETS: dict[str, ModelConfig] = {
    # Qwen/Qwen2.5-Math-7B: 7.62B parameters.
    "qwen2.5-math-7b": ModelConfig(
        vocab_size=152_064, hidden_size=3_584, intermediate_size=18_944, num_layers=28,
        num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=10_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, attention_bias=True, max_position_embeddings=4_096,
        architecture="Qwen2ForCausalLM"),
    # Qwen/Qwen2.5-Math-1.5B: 1.54B parameters (tied embeddings).
    "qwen2.5-math-1.5b": ModelConfig(
        vocab_size=151_936, hidden_size=1_536, intermediate_size=8_960, num_layers=28,
        num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=10_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, attention_bias=True, max_position_embeddings=4_096,
        architecture="Qwen2ForCausalLM"),
    # meta-llama/Llama-3.1-8B(-Instruct): 8.03B parameters.
    "llama-3.1-8b": ModelConfig(
        vocab_size=128_256, hidden_size=4_096, intermediate_size=14_336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500_000.0,
        rope_scaling=_LLAMA3_8B_ROPE, rms_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=131_072, architecture="LlamaForCausalLM"),
    # meta-llama/Llama-3.2-1B(-Instruct): 1.24B parameters (tied embeddings).
    "llama-3.2-1b": ModelConfig(
        vocab_size=128_256, hidden_size=2_048, intermediate_size=8_192, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500_000.0,
        rope_scaling=_LLAMA3_2_ROPE, rms_norm_eps=1e-5, tie_word_embeddings=True,
        max_position_embeddings=131_072, architecture="LlamaForCausalLM"),
    # HuggingFaceTB/SmolLM2-135M(-Instruct): 135M parameters (tied embeddings), the main
    # job's teacher, here without its weights (e.g. timings where its GGUF is not at hand).
    "smollm2-135m": ModelConfig(
        vocab_size=49_152, hidden_size=576, intermediate_size=1_536, num_layers=30,
        num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100_000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, max_position_embeddings=8_192,
        architecture="LlamaForCausalLM"),
}

# Hugging Face hub ids whose architecture is a preset.
HUB_IDS: dict[str, str] = {
    "Qwen/Qwen2.5-Math-7B": "qwen2.5-math-7b",
    "Qwen/Qwen2.5-Math-7B-Instruct": "qwen2.5-math-7b",
    "Qwen/Qwen2.5-Math-1.5B": "qwen2.5-math-1.5b",
    "Qwen/Qwen2.5-Math-1.5B-Instruct": "qwen2.5-math-1.5b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b",
    "HuggingFaceTB/SmolLM2-135M": "smollm2-135m",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
}


def is_preset(path: str) -> bool:
  """Whether a model path names a preset (`preset:NAME`)."""
  return str(path).startswith(PREFIX)


def get(path: str) -> ModelConfig:
  """The preset named by `preset:NAME` (or bare `NAME`).

  Raises:
    ValueError listing the presets when the name is unknown.
  """
  name = str(path)[len(PREFIX):] if is_preset(path) else str(path)
  if name not in PRESETS:
    raise ValueError(f"Unknown model preset {path!r}; valid: "
                     f"{', '.join(PREFIX + n for n in sorted(PRESETS))}.")
  return PRESETS[name]


def for_hub_id(path: str) -> ModelConfig | None:
  """The preset of a known hub id (e.g. `Qwen/Qwen2.5-Math-7B`), else None."""
  name = HUB_IDS.get(str(path))
  return PRESETS[name] if name else None
