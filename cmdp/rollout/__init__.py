"""Rollouts: batched KV-cache sampling (temperature / top-k / top-p / greedy) and log-probs.

`token_logprobs` is `cmdp.divergences.token_logprobs`, re-exported here.
"""
from cmdp.divergences import token_logprobs
from cmdp.rollout.processors import process_logits, sample_token
from cmdp.rollout.sampler import (Rollout, Sampler, SamplingSettings, check_prompts,
                                  make_sampler, rollout_logprobs, sample)
