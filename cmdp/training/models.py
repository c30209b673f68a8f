"""Builds the frozen teacher and the trainable student described by a config.

The teacher comes from a checkpoint (`teacher.path`) or a random init; the student from its
own checkpoint, from a subset of the teacher's layers (`student.cut_layers`, the usual way
to make a small student from a big model), from another run's final checkpoint
(`student.init_workdir`, e.g. after a supervised "healing" stage) or a random init. A path
`preset:NAME` (`cmdp.models.presets`) is a random init with a published architecture; it
has no tokenizer, so such a run sets `config.tokenizer='char'`.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import ml_collections

from cmdp import models
from cmdp.models import presets, refit
from cmdp.models.char_tokenizer import char_tokenizer
from cmdp.models.tokenizer import tokenizer_from_directory
from cmdp.training import config as config_lib


class LoadedModel(NamedTuple):
  config: models.ModelConfig
  params: Any


def _random_model(fields: ml_collections.ConfigDict, vocab_size: int, dtype: str,
                  rng: jax.Array, remat: bool = False) -> LoadedModel:
  kw = fields.to_dict()
  kw["vocab_size"] = kw["vocab_size"] or vocab_size
  cfg = models.ModelConfig(dtype=dtype, remat=remat, **kw)
  return LoadedModel(cfg, models.init_params(cfg, rng))


def cut_layers(model: LoadedModel, keep: tuple[int, ...]) -> LoadedModel:
  """A student made of the teacher's layers `keep` (in order), embeddings and head shared."""
  n = model.config.num_layers
  bad = [i for i in keep if not 0 <= i < n]
  if bad or len(set(keep)) != len(keep):
    raise ValueError(f"config.student.cut_layers={tuple(keep)}: layer indices must be distinct "
                     f"and in [0, {n}) for a {n}-layer teacher.")
  return LoadedModel(model.config.replace(num_layers=len(keep)),
                     refit.cut(model.params, keep))


def load_teacher_and_student(config: ml_collections.ConfigDict, rng: jax.Array):
  """Returns `(teacher: LoadedModel, student: LoadedModel, tokenizer)`.

  Raises ValueError when the two models do not share a vocabulary.
  """
  t_rng, s_rng = jax.random.split(rng)
  tokenizer = _config_tokenizer(config.tokenizer)
  if config.teacher.path:
    teacher, t_tok = _load(config.teacher.path, "teacher", tokenizer, t_rng)
    teacher = LoadedModel(teacher.config.replace(dtype=config.teacher.dtype), teacher.params)
    tokenizer = tokenizer or t_tok
  else:
    if tokenizer is None:
      raise ValueError("config.tokenizer: a randomly initialised teacher (teacher.path='') "
                       "needs a tokenizer; set config.tokenizer='char' or a tokenizer directory.")
    teacher = _random_model(config.teacher.random_init, len(tokenizer), config.teacher.dtype,
                            t_rng)

  teacher_dtype, student_dtype = config_lib.param_dtypes(config)
  teacher = LoadedModel(teacher.config.replace(param_dtype=teacher_dtype), teacher.params)
  s = config.student
  if s.path:
    student, s_tok = _load(s.path, "student", tokenizer, s_rng)
    _check_same_tokenizer(tokenizer, s_tok)
  elif s.cut_layers:
    student = cut_layers(teacher, tuple(s.cut_layers))
  else:
    student = _random_model(s.random_init, teacher.config.vocab_size, s.dtype, s_rng)
  student = LoadedModel(student.config.replace(dtype=s.dtype, param_dtype=student_dtype,
                                              remat=s.remat), student.params)

  return (*share_vocabulary(teacher, student, len(tokenizer) if tokenizer else 0), tokenizer)


def _config_tokenizer(name: str):
  """`config.tokenizer`: "" (the teacher checkpoint's, None here), "char", or a local
  directory of Hugging Face tokenizer files (e.g. for a preset teacher)."""
  if not name:
    return None
  if name == "char":
    return char_tokenizer()
  tokenizer = tokenizer_from_directory(name) if os.path.isdir(name) else None
  if tokenizer is None:
    raise ValueError(f"config.tokenizer={name!r}: not 'char' and not a directory holding "
                     "tokenizer files (tokenizer.json, tokenizer_config.json, ...); use '' "
                     "for the teacher checkpoint's own tokenizer.")
  return tokenizer


def _load(path: str, field: str, tokenizer, rng: jax.Array):
  """`(LoadedModel, tokenizer or None)` of `config.<field>.path`: a checkpoint, or a random
  init of a preset's architecture (no tokenizer: `tokenizer` must be given)."""
  if presets.is_preset(path):
    if tokenizer is None:
      raise ValueError(
          f"config.{field}.path={path!r} is an architecture preset (random weights) and has no "
          "tokenizer; set config.tokenizer='char', or name a checkpoint.")
    cfg = presets.get(path)
    return LoadedModel(cfg, models.init_params(cfg, rng)), None
  cfg, params, tok = models.load_pretrained(path)
  return LoadedModel(cfg, params), tok


def share_vocabulary(teacher: LoadedModel, student: LoadedModel, tokenizer_size: int):
  """Makes both models emit logits over the same rows, or raises.

  Embedding tables padded to different sizes (same tokenizer) are fine: both models then
  keep the first min(V_teacher, V_student) logits, which cover every tokenizer id.
  """
  vt, vs = teacher.config.vocab_size, student.config.vocab_size
  if vt == vs:
    return teacher, student
  shared = min(vt, vs)
  if shared < tokenizer_size:
    raise ValueError(
        f"config.student: the student's vocabulary ({vs} tokens) differs from the teacher's "
        f"({vt}) and does not cover the tokenizer's {tokenizer_size} ids. Distillation compares "
        "per-token distributions, so both must share one tokenizer: pick a student of the "
        "teacher's family.")
  return (LoadedModel(teacher.config.replace(output_vocab=shared), teacher.params),
          LoadedModel(student.config.replace(output_vocab=shared), student.params))


def _check_same_tokenizer(teacher_tok, student_tok) -> None:
  if teacher_tok is None or student_tok is None:
    return
  if teacher_tok.get_vocab() != student_tok.get_vocab():
    raise ValueError(
        "config.student.path: the student's tokenizer differs from the teacher's "
        f"({len(student_tok)} vs {len(teacher_tok)} tokens or different ids). Distillation "
        "needs one shared vocabulary: pick a student of the teacher's family.")
