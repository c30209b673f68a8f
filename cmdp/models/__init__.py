"""Models: a Flax causal decoder for the Llama / Qwen2 / Qwen3 / SmolLM2 families."""
from cmdp.models.config import ModelConfig
from cmdp.models.transformer import (KVCache, forward, forward_with_cache, init_cache,
                                     init_params)
