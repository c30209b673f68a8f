"""Rollouts: batched KV-cache sampling (temperature / top-k / top-p / greedy) and log-probs."""
from cmdp.rollout.processors import process_logits, sample_token, token_logprobs
from cmdp.rollout.sampler import (Rollout, Sampler, SamplingSettings, check_prompts,
                                  make_sampler, rollout_logprobs, sample)
