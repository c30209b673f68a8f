"""Chat prompts and their token arrays.

Prompts are rendered with the tokenizer's own chat template and then tokenised with
`add_special_tokens=False`: the template already writes any BOS / turn tokens, so the
tokenizer must not add a second BOS.

Shapes are static so jitted rollouts compile once: prompts are LEFT padded (generation
continues at the right edge of every row), supervised sequences RIGHT padded. Prompts that
all begin with the same tokens (the instruction and few-shot examples, `common_prefix`)
may keep those first and pad after them, so a model runs the shared part once per batch
(`cmdp.models.forward(shared_prefix=...)`).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, showing your reasoning. "
    "End your reply with a final line of the form '#### <number>' giving only the final "
    "numeric answer.")


def _pair(shot: Any) -> tuple[str, str]:
  """A few-shot item as (question, worked solution)."""
  if isinstance(shot, (tuple, list)) and len(shot) == 2:
    return str(shot[0]), str(shot[1])
  question, solution = getattr(shot, "question", None), getattr(shot, "solution", None)
  if question is None:
    raise ValueError(f"few_shot item {shot!r}: pass (question, solution) pairs or Examples.")
  if solution is None:
    solution = f"#### {shot.answer}"
  return question, solution


PROMPT_FORMATS = ("chat", "plain")


def build_prompt(tokenizer, question: str, *, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 few_shot: Sequence[Any] = (), prompt_format: str = "chat") -> str:
  """The prompt text for one question, ending where the answer starts.

  Args:
    tokenizer: a Hugging Face tokenizer (with a `chat_template` for the chat format).
    question: the problem text.
    system_prompt: system message (default asks for step-by-step reasoning and a final
      `#### <number>` line); None or "" sends no system message.
    few_shot: worked examples shown first: `(question, solution)` pairs or `Example`s (an
      Example without a solution shows `#### <answer>`).
    prompt_format: "chat": the tokenizer's chat template, few-shot items as earlier user /
      assistant turns. "plain": a completion prompt with no template, one line each for the
      system prompt, every question and every solution, ending with the question's line
      (`"sys\nq1\na1\nq\n"`): about half the tokens for short answers, which then end at
      a line break (stop on it: `rollout.stop_tokens=("\n",)`).

  Returns:
    The chat template's text (`add_generation_prompt=True`), or the plain text.
  """
  if prompt_format not in PROMPT_FORMATS:
    raise ValueError(f"build_prompt: prompt_format={prompt_format!r}; use one of "
                     f"{PROMPT_FORMATS}.")
  if not isinstance(question, str) or not question.strip():
    raise ValueError(f"build_prompt: question={question!r} must be a non-empty string.")
  if prompt_format == "plain":
    lines = [system_prompt] if system_prompt else []
    for shot in few_shot:
      lines += _pair(shot)
    return "\n".join(lines + [question]) + "\n"
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("build_prompt: the tokenizer has no chat_template; set "
                     "`tokenizer.chat_template` to a jinja template (e.g. ChatML), or use "
                     "prompt_format='plain'.")
  messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
  for shot in few_shot:
    shot_question, shot_solution = _pair(shot)
    messages += [{"role": "user", "content": shot_question},
                 {"role": "assistant", "content": shot_solution}]
  messages.append({"role": "user", "content": question})
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _pad_id(tokenizer) -> int:
  pad = tokenizer.pad_token_id
  if pad is None:
    pad = tokenizer.eos_token_id
  if pad is None:
    raise ValueError("The tokenizer has neither pad_token_id nor eos_token_id; set "
                     "`tokenizer.pad_token`.")
  return int(pad)


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def common_prefix(tokenizer, prompts: Sequence[str],
                  max_prompt_len: int = 0) -> tuple[int, ...]:
  """The longest run of leading tokens every prompt shares, leaving each at least one token
  of its own (each prompt tokenised whole, as `encode_prompts` does); () when some prompt
  is longer than `max_prompt_len` (> 0), which `encode_prompts` then cuts from the left,
  prefix first."""
  rows = _ids(tokenizer, prompts) if len(prompts) else []
  if not rows or (max_prompt_len and max(map(len, rows)) > max_prompt_len):
    return ()
  first = rows[0]
  n = min(len(r) for r in rows) - 1
  for row in rows[1:]:
    n = next((i for i in range(n) if row[i] != first[i]), n)
  return tuple(int(t) for t in first[:max(n, 0)])


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_len: int,
                   shared_prefix: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
  """Tokenises prompts into a left-padded batch of fixed width.

  Prompts longer than `max_prompt_len` keep their last `max_prompt_len` tokens (the end,
  where the question and the assistant header are); a warning says how many were cut.

  Args:
    tokenizer: a Hugging Face tokenizer.
    prompts: B prompt texts (e.g. from `build_prompt`).
    max_prompt_len: P, the fixed width.
    shared_prefix: token ids every prompt begins with (`common_prefix`): they fill the
      first columns of every row, and each row's own tokens are left padded after them
      (`[prefix, pad..., own tokens]`; a long prompt loses the start of its own tokens). A
      prompt that does not begin with them is an error.

  Returns:
    tokens: int32 [B, P], pad id (pad, else EOS) on the left (after the shared prefix).
    mask: int32 [B, P], 1 on real tokens, 0 on padding.
  """
  if max_prompt_len <= 0:
    raise ValueError(f"encode_prompts: max_prompt_len={max_prompt_len} must be positive.")
  prefix = list(shared_prefix)
  s = len(prefix)
  if s >= max_prompt_len:
    raise ValueError(f"encode_prompts: the shared prefix has {s} tokens, leaving none of "
                     f"max_prompt_len={max_prompt_len}; raise data.max_prompt_len.")
  pad = _pad_id(tokenizer)
  rows = _ids(tokenizer, prompts) if len(prompts) else []
  tokens = np.full((len(rows), max_prompt_len), pad, np.int32)
  mask = np.zeros((len(rows), max_prompt_len), np.int32)
  tokens[:, :s], mask[:, :s] = prefix, 1
  width = max_prompt_len - s
  truncated = 0
  for i, row in enumerate(rows):
    if not row:
      raise ValueError(f"encode_prompts: prompt {i} tokenises to nothing: {prompts[i]!r}.")
    if s and (len(row) <= s or list(row[:s]) != prefix):
      raise ValueError(f"encode_prompts: prompt {i} does not begin with the {s} shared "
                       f"prefix tokens (and one of its own): {prompts[i]!r}.")
    row = row[s:]
    if len(row) > width:
      truncated += 1
      row = row[-width:]
    tokens[i, max_prompt_len - len(row):] = row
    mask[i, max_prompt_len - len(row):] = 1
  if truncated:
    logger.warning("encode_prompts: %d of %d prompts were longer than max_prompt_len=%d and "
                   "lost tokens; raise max_prompt_len.", truncated, len(rows), max_prompt_len)
  return tokens, mask


def encode_sft(tokenizer, prompt: str, solution: str,
               max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One supervised sequence `prompt + solution + EOS`, right padded to `max_len`.

  The prompt and the solution are tokenised separately, so the prompt tokens are exactly
  those a rollout starts from. EOS is the tokenizer's `eos_token_id` (for chat models the
  end-of-turn token, e.g. `<|im_end|>`). A sequence longer than `max_len` loses its end
  (EOS first), with a warning.

  Args:
    tokenizer: a Hugging Face tokenizer.
    prompt: prompt text (e.g. from `build_prompt`).
    solution: target text (e.g. `Example.solution`).
    max_len: L, the fixed length.

  Returns:
    tokens: int32 [L], pad id after the sequence.
    mask: int32 [L], 1 on real tokens (prompt, solution, EOS).
    loss_mask: int32 [L], 1 where the token is a supervised target (solution and EOS). The
      objective predicts `tokens[t]` from the logits at `t - 1`, i.e. uses `loss_mask[1:]`.
  """
  eos = tokenizer.eos_token_id
  if eos is None:
    raise ValueError("encode_sft: the tokenizer has no eos_token_id; set `tokenizer.eos_token`.")
  prompt_ids, solution_ids = _ids(tokenizer, [prompt, solution])
  if len(prompt_ids) >= max_len:
    raise ValueError(f"encode_sft: the prompt has {len(prompt_ids)} tokens, leaving no room "
                     f"for the solution in max_len={max_len}; raise max_len.")
  target = list(solution_ids) + [int(eos)]
  if len(prompt_ids) + len(target) > max_len:
    logger.warning("encode_sft: %d prompt + %d solution tokens exceed max_len=%d; the "
                   "solution is cut.", len(prompt_ids), len(target), max_len)
    target = target[:max_len - len(prompt_ids)]
  n = len(prompt_ids) + len(target)
  tokens = np.full((max_len,), _pad_id(tokenizer), np.int32)
  tokens[:n] = list(prompt_ids) + target
  mask = np.zeros((max_len,), np.int32)
  mask[:n] = 1
  loss_mask = np.zeros((max_len,), np.int32)
  loss_mask[len(prompt_ids):n] = 1
  return tokens, mask, loss_mask


def encode_sft_batch(tokenizer, prompts: Sequence[str], solutions: Sequence[str],
                     max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`encode_sft` for B pairs, stacked: three int32 arrays [B, max_len]."""
  if len(prompts) != len(solutions):
    raise ValueError(f"encode_sft_batch: {len(prompts)} prompts but {len(solutions)} "
                     "solutions; pass one solution per prompt.")
  if not len(prompts):
    raise ValueError("encode_sft_batch: no sequences given.")
  rows = [encode_sft(tokenizer, p, s, max_len) for p, s in zip(prompts, solutions)]
  tokens, mask, loss_mask = (np.stack(x) for x in zip(*rows))
  return tokens, mask, loss_mask
