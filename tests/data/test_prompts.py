"""Chat prompts and their token arrays, with a tiny in-process byte-level BPE tokenizer."""
import logging

import numpy as np
import pytest
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from cmdp.data import (DEFAULT_SYSTEM_PROMPT, build_prompt, common_prefix, encode_prompts,
                       encode_sft)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tok():
  core = tokenizers.Tokenizer(models.BPE())
  core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  core.decoder = decoders.ByteLevel()
  corpus = ["What is 2 + 3? Solve the problem step by step.", DEFAULT_SYSTEM_PROMPT,
            "#### 5 The answer is five.", "user assistant system"]
  core.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  t = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>",
                                           eos_token="<|im_end|>")
  t.chat_template = CHATML
  return t


def _core_ids(tok, text):  # the raw `tokenizers` encoding, independent of our code
  return tok.backend_tokenizer.encode(text, add_special_tokens=False).ids


def test_build_prompt_applies_the_chat_template(tok):
  prompt = build_prompt(tok, "What is 2 + 3?")
  assert prompt == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
  shot = build_prompt(tok, "Q2", system_prompt=None, few_shot=[("Q1", "A1\n#### 1")])
  assert shot == ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1\n#### 1<|im_end|>\n"
                  "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(ValueError, match="non-empty"):
    build_prompt(tok, "  ")


def test_build_prompt_needs_a_template(tok):
  bare = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer,
                                              eos_token="<|im_end|>")
  with pytest.raises(ValueError, match="chat_template"):
    build_prompt(bare, "hi")


def test_plain_prompts_are_one_line_each_and_need_no_template(tok):
  bare = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer,
                                              eos_token="<|im_end|>")
  prompt = build_prompt(bare, "Calculate 5 + 6.", system_prompt="Give the result.",
                        few_shot=[("Calculate 3 + 4.", "3 + 4 = 7")], prompt_format="plain")
  assert prompt == "Give the result.\nCalculate 3 + 4.\n3 + 4 = 7\nCalculate 5 + 6.\n"
  assert build_prompt(bare, "Q", system_prompt=None, prompt_format="plain") == "Q\n"
  with pytest.raises(ValueError, match=r"prompt_format='html'.*\('chat', 'plain'\)"):
    build_prompt(tok, "Q", prompt_format="html")


def test_encode_prompts_left_pads(tok):
  prompts = [build_prompt(tok, "What is 2 + 3?"), build_prompt(tok, "Hi", system_prompt=None)]
  ids = [_core_ids(tok, p) for p in prompts]
  assert ids[0][0] == tok.convert_tokens_to_ids("<|im_start|>")
  width = len(ids[0]) + 2
  tokens, mask = encode_prompts(tok, prompts, width)
  assert tokens.dtype == np.int32 and mask.dtype == np.int32 and tokens.shape == (2, width)
  pad = tok.convert_tokens_to_ids("<|pad|>")
  for row, (t, m) in enumerate(zip(tokens, mask)):
    n = len(ids[row])
    np.testing.assert_array_equal(t, [pad] * (width - n) + ids[row])
    np.testing.assert_array_equal(m, [0] * (width - n) + [1] * n)


def test_encode_prompts_truncates_from_the_left_and_warns(tok, caplog):
  prompts = [build_prompt(tok, "What is 2 + 3?"), "Hi"]
  long_ids = _core_ids(tok, prompts[0])
  with caplog.at_level(logging.WARNING):
    tokens, mask = encode_prompts(tok, prompts, 8)
  np.testing.assert_array_equal(tokens[0], long_ids[-8:])
  np.testing.assert_array_equal(mask[0], np.ones(8))
  assert "1 of 2 prompts" in caplog.text


def test_encode_sft_masks_only_the_solution_and_eos(tok):
  prompt = build_prompt(tok, "What is 2 + 3?")
  solution = "2 + 3 = 5\n#### 5"
  p_ids, s_ids = _core_ids(tok, prompt), _core_ids(tok, solution)
  eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|pad|>")
  n = len(p_ids) + len(s_ids) + 1
  tokens, mask, loss_mask = encode_sft(tok, prompt, solution, n + 3)
  np.testing.assert_array_equal(tokens, p_ids + s_ids + [eos] + [pad] * 3)
  np.testing.assert_array_equal(mask, [1] * n + [0] * 3)
  np.testing.assert_array_equal(loss_mask, [0] * len(p_ids) + [1] * (len(s_ids) + 1) + [0] * 3)
  assert tok.decode(tokens[loss_mask == 1]) == solution + "<|im_end|>"
  # Too long: the end (EOS first) is cut; a prompt filling max_len is an error.
  tokens, mask, loss_mask = encode_sft(tok, prompt, solution, n - 1)
  np.testing.assert_array_equal(tokens, p_ids + s_ids)
  assert loss_mask.sum() == len(s_ids)
  with pytest.raises(ValueError, match="no room"):
    encode_sft(tok, prompt, solution, len(p_ids))


def test_common_prefix_and_the_shared_prefix_layout(tok):
  questions = ["What is 2 + 3?", "What is five?", "Hi"]
  prompts = [build_prompt(tok, q, few_shot=[("What is 1 + 1?", "#### 2")]) for q in questions]
  ids = [_core_ids(tok, p) for p in prompts]
  # Brute force: the longest common run of leading ids, one own token left to each prompt.
  n = 0
  while n < min(map(len, ids)) - 1 and len({r[n] for r in ids}) == 1:
    n += 1
  prefix = common_prefix(tok, prompts)
  assert list(prefix) == ids[0][:n] and n > 10
  assert common_prefix(tok, [prompts[0]]) == tuple(ids[0][:-1])
  assert common_prefix(tok, []) == ()
  assert common_prefix(tok, prompts, max(map(len, ids))) == prefix
  assert common_prefix(tok, prompts, max(map(len, ids)) - 1) == ()  # one would be cut
  width = max(map(len, ids)) + 2
  tokens, mask = encode_prompts(tok, prompts, width, prefix)
  pad = tok.convert_tokens_to_ids("<|pad|>")
  for row, (t, m) in enumerate(zip(tokens, mask)):
    own = ids[row][n:]
    gap = width - n - len(own)
    np.testing.assert_array_equal(t, ids[row][:n] + [pad] * gap + own)
    np.testing.assert_array_equal(m, [1] * n + [0] * gap + [1] * len(own))
    assert tok.decode(t[m == 1]) == prompts[row]
  # Too long: the prompt's own tokens lose their start; the prefix stays.
  tokens, _ = encode_prompts(tok, prompts, n + 2, prefix)
  np.testing.assert_array_equal(tokens[0], ids[0][:n] + ids[0][-2:])
  with pytest.raises(ValueError, match="does not begin with the"):
    encode_prompts(tok, prompts + ["Something else"], width, prefix)
  with pytest.raises(ValueError, match="max_prompt_len"):
    encode_prompts(tok, prompts, n, prefix)
