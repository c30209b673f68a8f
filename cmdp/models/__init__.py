"""Models: a Flax causal decoder for the Llama / Qwen2 / Qwen3 / SmolLM2 families."""
from cmdp.models.config import ModelConfig
from cmdp.models.transformer import (KVCache, forward, forward_with_cache, init_cache,
                                     init_params)
from cmdp.models.loading import CheckpointError, load_pretrained
from cmdp.models.saving import save_pretrained
from cmdp.models.tokenizer import tokenizer_from_gguf
