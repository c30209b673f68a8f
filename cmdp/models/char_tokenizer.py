"""A character-level tokenizer with a ChatML template, built in-process (no downloads).

It backs the randomly initialised tiny teacher and student of `configs/tiny.py` and the
tests: every printable ASCII character is one token, plus the ChatML control tokens, so
text round-trips exactly and the chat template behaves like SmolLM2's.
"""
from __future__ import annotations

import string

import tokenizers
from tokenizers import decoders, models, pre_tokenizers
import transformers

SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def char_tokenizer(alphabet: str = string.printable) -> transformers.PreTrainedTokenizerFast:
  """Returns a `PreTrainedTokenizerFast`: one token per character of `alphabet`.

  Ids: the special tokens first (`<|pad|>` = 0, `<|im_start|>` = 1, `<|im_end|>` = 2 is
  also EOS, `<|unk|>` = 3), then the alphabet in order. Vocabulary size is
  `len(SPECIAL_TOKENS) + len(set(alphabet))`.
  """
  chars = list(dict.fromkeys(alphabet))
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  for ch in chars:
    vocab.setdefault(ch, len(vocab))
  core = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
  core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
  core.decoder = decoders.Fuse()
  core.add_special_tokens(list(SPECIAL_TOKENS))
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=core, pad_token="<|pad|>", eos_token="<|im_end|>",
      bos_token="<|im_start|>", unk_token="<|unk|>")
  tok.chat_template = CHATML_TEMPLATE
  tok.padding_side = "left"
  return tok
