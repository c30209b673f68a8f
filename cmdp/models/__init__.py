"""Models: a Flax causal decoder for the Llama / Qwen2 / Qwen3 / SmolLM2 families.

`forward` is the training forward (all positions, `nn.scan` over layers); `init_cache` and
`forward_with_cache` are the one cached path (prefill and one-token steps, what the sampler
runs), in `cmdp.models.decode`, with `decode_params` laying the weights out once per rollout
and `cache_specs` the cache's layout on a mesh.
"""
from cmdp.models.config import ModelConfig
from cmdp.models.transformer import forward, init_params
from cmdp.models.decode import (DecodeParams, KVCache, cache_specs, decode_params,
                                forward_with_cache, init_cache)
from cmdp.models.loading import CheckpointError, load_pretrained
from cmdp.models.refit import LayerFit, refit_cut
from cmdp.models.saving import save_pretrained
from cmdp.models.tokenizer import tokenizer_from_gguf
