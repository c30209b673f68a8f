"""The experiment config: every field the trainer reads, with its default and meaning.

Experiment files in `configs/` start from `base_config()` and override fields; the result
is locked, so a misspelt key (in a file or a `--config.x=...` override) fails at once.
`validate(config)` checks values that cannot work, naming the field and the fix.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax
import ml_collections

from cmdp import data
from cmdp.cli import MOVED_FIELDS, moved_field
from cmdp.objectives import ObjectiveConfig, available_objectives, get_objective

# The ObjectiveConfig fields the rollout sets (the sampling policy's temperature, the
# samples per prompt): `config.rollout`'s, not `config.loss`'s.
ROLLOUT_FIELDS = ("temperature", "group_size")


def model_fields(**overrides) -> ml_collections.ConfigDict:
  """Fields of a randomly initialised model (`cmdp.models.ModelConfig`)."""
  fields = dict(
      vocab_size=0,  # 0: take the tokenizer's size
      hidden_size=64,  # residual width
      intermediate_size=128,  # SwiGLU width
      num_layers=2,  # decoder blocks
      num_heads=4,  # query heads
      num_kv_heads=2,  # key/value heads
      head_dim=16,  # per-head width
      rope_theta=10_000.0,  # RoPE base
      tie_word_embeddings=True,  # share embedding and lm head
      attention_bias=False,  # q/k/v biases (Qwen2)
      max_position_embeddings=1024,  # longest sequence
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def base_config() -> ml_collections.ConfigDict:
  """All trainer fields with defaults; experiment configs override them."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds parameters (random init), data order and sampling
  c.objective = "cmdp"  # registered objective: see cmdp.objectives.available_objectives()

  # The objective's hyper-parameters: the fields of cmdp.objectives.ObjectiveConfig (its
  # `temperature` and `group_size` come from the rollout's). Set the objective with
  # `set_objective`, which applies its preset (e.g. worst_case's cost and constraint).
  c.loss = loss_fields()
  # Budget calibration (method.md): if > 0, set loss.budget to this quantile of the initial
  # student's per-sequence cost against the teacher, measured on held-out problems drawn as
  # the evaluated ones are (`calibration_prompts`; cmdp.training.calibration).
  c.calibrate_budget_quantile = 0.0
  # questions of the test split's calibration part (cmdp.data.heldout: disjoint from the
  # training and the evaluated problems; made alike with data.test_size equal), each x
  # calibration_samples_per_prompt samples
  c.calibration_prompts = 16
  c.calibration_samples_per_prompt = 0  # samples of each calibration question (0 = group_size)
  c.calibration_batch_size = 0  # sequences sampled and scored per pass (0 = batch_size)
  c.format_reward_weight = 0.0  # task reward = correct + this * well-formed '#### n' line

  c.teacher = ml_collections.ConfigDict(dict(
      path="",  # HF directory, hub id (local cache only) or .gguf file; "" = random init
      random_init=model_fields(),  # architecture when path is ""
      dtype="float32",  # compute dtype: float32 | bfloat16
      # storage dtype of the frozen teacher's parameters: "" = its compute dtype (a
      # bfloat16 teacher needs no float32 copy), or float32 | bfloat16
      param_dtype="",
  ))
  c.student = ml_collections.ConfigDict(dict(
      path="",  # as teacher.path; "" = cut from the teacher or random init
      # Teacher layers kept by a student cut from the teacher (e.g. (0, 2, 4)); () = no cut.
      cut_layers=(),
      # A cut student starts from the layer-wise least-squares repair of the cut
      # (`cmdp.models.refit_cut`: each layer's down_proj from the first dropped layer on is
      # re-fitted so the student's residual stream tracks the teacher's) on this many
      # teacher samples of training prompts, in the heal stage (cached); 0 = the plain cut.
      refit_samples=0,
      refit_ridge=1e-3,  # the fit's ridge, relative to the Gram matrix's mean diagonal
      random_init=model_fields(num_layers=1),  # architecture when neither path nor cut
      init_workdir="",  # start from the final checkpoint of another run (e.g. an sft heal)
      dtype="float32",  # compute dtype
      param_dtype="float32",  # storage dtype of the trained weights (float32 master weights)
      remat=False,  # rematerialise blocks in the backward pass
  ))
  c.tokenizer = ""  # "" = the teacher's; "char" = built-in characters; or a tokenizer dir
  # Healing a student cut from the teacher (cut students are broken at first): before
  # anything else, as a run of its own in `heal.dir`, refit it (`student.refit_samples`)
  # and/or distil it on the teacher's samples (`heal_config`: gkd with gkd_beta=0, the
  # forward KL(teacher || student) at every response token). A finished heal there is
  # reused by the next run.
  c.heal = ml_collections.ConfigDict(dict(
      steps=0,  # optimiser steps of the heal; 0 = no heal
      batch_size=16,  # teacher samples per step
      learning_rate=1e-4,  # constant after a warm-up over a tenth of the steps
      dir="",  # where the heal run lives; "" = <workdir>/heal
  ))

  c.data = ml_collections.ConfigDict(dict(
      train="reasoning_gym:basic_arithmetic",  # see cmdp.data.load_task
      test="reasoning_gym:basic_arithmetic",  # evaluation task (disjoint seed / split)
      train_size=1_000,  # procedural tasks: examples generated (ignored for files)
      test_size=64,  # questions evaluated (the test split's evaluated part, data.heldout)
      task_kwargs=ml_collections.ConfigDict(),  # extra reasoning-gym task arguments
      system_prompt="",  # "" = cmdp.data default (step by step, final line '#### <n>')
      few_shot=(),  # (question, worked solution) pairs shown before each question
      prompt_format="chat",  # "chat" (the tokenizer's template) | "plain" (one line each)
      max_prompt_len=128,  # prompts are left padded/truncated to this many tokens
      # The leading tokens every prompt shares (instruction, few-shot examples) run once
      # per batch, as one row, in every forward pass and prefill (same numbers, less work).
      share_prompt_prefix=True,
      sft_max_len=256,  # supervised sequences (sft / gkd off-policy) are padded to this
  ))

  c.rollout = ml_collections.ConfigDict(dict(
      # responses sampled per prompt (G); a batch's rows come in contiguous groups of this
      # size (the objectives' group baseline, dynamic sampling's groups)
      group_size=8,
      max_new_tokens=128,  # response length cap
      temperature=1.0,  # sampling temperature for training rollouts
      top_k=0,  # 0 = off
      top_p=1.0,  # 1.0 = off
      stop_tokens=(),  # texts of one token each that end a response besides EOS, e.g. ("\n",)
      on_policy_fraction=1.0,  # gkd: fraction of steps on student samples (else references)
      sft_source="reference",  # off-policy sequences: reference solutions | teacher samples
      teacher_logits_dtype="float32",  # teacher logits passed to the loss: float32 | bfloat16
  ))
  # Dynamic sampling (DAPO's filter_groups): a step trains only on prompt groups with
  # contrast, groups whose rows give the objective's loss a nonzero gradient (docs/method.md);
  # generation batches are sampled and filtered until the step's batch is full.
  c.dynamic_sampling = ml_collections.ConfigDict(dict(
      enabled=False,  # on: fill each step with groups that carry a gradient
      generation_prompts=0,  # prompts per generation batch (0 = the step's prompts)
      max_generation_batches=4,  # cap on generation batches per step
      # at the cap without a full batch: proceed (fill the rest with the step's first groups
      # without contrast, which add nothing to the update; logged) | error
      at_cap="proceed",
      # on: the signal pass also returns the teacher's response-window logits (in
      # rollout.teacher_logits_dtype); the kept rows' stay on the devices and the step reads
      # them instead of running the teacher again. Holds B x W x V x bytes (W: the response
      # window) per generation batch until the step, which otherwise never holds the whole
      # batch's: for short windows and small batches. Refused for a teacher on devices of
      # its own; ignored for an objective that does not read the teacher (grpo)
      keep_teacher_logits=False,
  ))

  c.batch_size = 8  # sequences per step (prompts x rollout.group_size)
  c.grad_accum_steps = 1  # microbatches per optimiser update (each holds whole groups)
  c.ppo_epochs = 1  # passes over each rollout batch (GRPO's mu, purejaxrl's UPDATE_EPOCHS)
  c.ppo_minibatches = 1  # optimiser updates per pass, each on 1/ppo_minibatches of the groups
  c.num_steps = 100  # optimiser steps
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",  # adamw | adam | sgd
      learning_rate=1e-5,  # peak learning rate
      warmup_steps=0,  # linear warm-up
      schedule="constant",  # constant | cosine | linear (decay after warm-up)
      weight_decay=0.0,  # decoupled weight decay (adamw)
      b1=0.9,  # Adam first-moment decay
      b2=0.999,  # Adam second-moment decay
      eps=1e-8,  # Adam denominator epsilon
      grad_clip_norm=1.0,  # global-norm clipping; 0 = off
      # an update whose gradient is exactly zero (no group with contrast) leaves the params
      # and the optimiser state bitwise unchanged, counted as `skipped`; False: Adam's
      # momentum moves the params on a zero gradient
      skip_zero_grad=True,
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      num_devices=0,  # devices used (0 = all); the first ones are taken
      data=-1,  # data-parallel axis size (-1 = the rest of the devices)
      fsdp=1,  # parameter-sharded data-parallel axis
      tensor=1,  # tensor-parallel axis
      teacher_tensor=0,  # >0: the teacher gets its own mesh of this tensor size
      teacher_disjoint=False,  # teacher on the devices the student mesh does not use
  ))

  c.log_every = 1  # steps between metrics.jsonl / TensorBoard rows
  c.eval_every = 0  # steps between evaluations (0 = only at the end when eval_at_end)
  # A fixed probe set: `probe_prompts` training prompts x rollout.group_size responses
  # sampled once by the initial student, re-scored by the current student every
  # `probe_every` steps (probe/... metrics: KL and satisfaction on the same responses, a
  # noise-free trend); 0 = off.
  c.probe_every = 0
  c.probe_prompts = 8  # prompts of the probe set (x rollout.group_size responses)
  c.eval_at_end = True  # evaluate the final student
  c.checkpoint_every = 50  # steps between checkpoints (0 = only final)
  c.keep_checkpoints = 3  # how many recent checkpoints to keep
  c.checkpoint_async = True  # save in the background (False: lower host memory peak)
  c.progress_bar = True  # tqdm bar with steps/s and tokens/s

  c.eval = ml_collections.ConfigDict(dict(
      batch_size=16,  # prompts per generation batch
      max_new_tokens=128,  # response cap at evaluation
      # samples per prompt at the training temperature (sampled accuracy, pass@k and
      # satisfaction on samples, next to greedy); 0 = greedy only
      pass_k=1,
      include_teacher=False,  # also evaluate the teacher
      include_initial_student=False,  # also evaluate the student before training
  ))
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict, *, mesh=(-1, 1, 1), **model) -> None:
  """The `small` switch of the accelerator configs: tiny random models with the char
  tokenizer on easy arithmetic, 2 steps, a few examples, on the CPU's (data, fsdp, tensor)
  `mesh`; `model` overrides both models' `model_fields` (e.g. attention_bias=True)."""
  c.tokenizer = "char"
  c.teacher.path = c.student.path = ""
  c.teacher.dtype = c.student.dtype = "float32"
  c.teacher.random_init = model_fields(num_layers=2, **model)
  c.student.random_init = model_fields(num_layers=1, **model)
  c.data.train = c.data.test = "reasoning_gym:basic_arithmetic"
  c.data.train_size, c.data.test_size = 16, 4
  c.data.max_prompt_len = 160
  c.rollout.max_new_tokens = c.eval.max_new_tokens = 8
  c.rollout.group_size, c.batch_size, c.grad_accum_steps = 2, 8, 2
  c.calibration_prompts = 2
  c.num_steps, c.eval_every, c.eval.batch_size, c.eval.pass_k = 2, 0, 8, 2
  c.eval.include_teacher = c.eval.include_initial_student = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh


def set_objective(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets `config.objective = name` and applies the objective's preset to `config.loss`
  (e.g. worst_case: cost=teacher_nll, constraint=prefix_mean, penalty=constant)."""
  if name not in available_objectives():
    raise ValueError(f"config.objective: {name!r} is not registered; use one of "
                     f"{sorted(available_objectives())}.")
  config.objective = name
  for field, value in get_objective(name).preset.items():
    config.loss[field] = value


def param_dtypes(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """`(teacher, student)` storage dtypes of the parameters (`teacher.param_dtype` "" is the
  teacher's compute dtype)."""
  return config.teacher.param_dtype or config.teacher.dtype, config.student.param_dtype


def heals(config: ml_collections.ConfigDict) -> bool:
  """Whether a run starts with the heal stage: distillation steps (`heal.steps`) or a
  refit of the cut student (`student.refit_samples`)."""
  return bool(config.heal.steps or config.student.refit_samples)


def heal_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run that heals `config`'s student (`config.heal`): the same models, data, prompts
  and rollout temperature; the student refitted first when `student.refit_samples` asks;
  then `gkd` with gkd_beta=0 on teacher samples only (the forward KL(teacher || student) at
  every response token), `heal.steps` steps of `heal.batch_size` samples (none: the refit
  alone, saved as step 0), no calibration, no evaluation and no probe set. Its budget is
  `config.loss.budget` (only its logged constraint figures read it)."""
  h = ml_collections.ConfigDict(config.to_dict())
  h.loss = base_config().loss
  set_objective(h, "gkd")
  h.loss.gkd_beta = 0.0
  h.rollout.group_size = 1
  h.loss.budget = config.loss.budget
  h.rollout.on_policy_fraction = 0.0
  h.dynamic_sampling.enabled = False  # teacher samples: nothing to filter
  h.rollout.sft_source = "teacher"
  h.batch_size = config.heal.batch_size
  h.grad_accum_steps = h.ppo_epochs = h.ppo_minibatches = 1
  h.num_steps = config.heal.steps
  h.optimizer.learning_rate = config.heal.learning_rate
  h.optimizer.schedule = "constant"
  h.optimizer.warmup_steps = config.heal.steps // 10
  h.calibrate_budget_quantile = 0.0
  h.eval_every, h.eval_at_end = 0, False
  h.eval.include_teacher = h.eval.include_initial_student = False
  h.probe_every = 0  # the probe set is the trained run's (8 s of sampling on the main job)
  h.checkpoint_every = 0
  h.student.init_workdir = ""
  h.heal.steps = 0
  h.heal.dir = ""
  return ml_collections.ConfigDict(h.to_dict())


def loss_fields(hp: ObjectiveConfig = ObjectiveConfig()) -> ml_collections.ConfigDict:
  """The `config.loss` of `hp`: its fields but those the rollout sets (`ROLLOUT_FIELDS`)."""
  return ml_collections.ConfigDict({k: v for k, v in dataclasses.asdict(hp).items()
                                    if k not in ROLLOUT_FIELDS})


def refuse_moved(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the new place of a field that `config` still sets at its old
  one (`cmdp.cli.MOVED_FIELDS`, e.g. loss.group_size, now rollout.group_size)."""
  for old in MOVED_FIELDS:
    node = config
    for part in old.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        break
      node = node[part]
    else:
      raise ValueError(moved_field(old))


def objective_config(config: ml_collections.ConfigDict) -> ObjectiveConfig:
  """The `ObjectiveConfig` of a run: `config.loss` plus the policy's temperature and the
  group size (the rollout's, `ROLLOUT_FIELDS`); bad or moved fields raise naming them."""
  refuse_moved(config)
  return ObjectiveConfig.from_dict({**config.loss.to_dict(),
                                    **{k: config.rollout[k] for k in ROLLOUT_FIELDS}})


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when a value cannot work."""
  def fail(field, msg):
    raise ValueError(f"config.{field}: {msg}")

  if config.objective not in available_objectives():
    fail("objective", f"{config.objective!r} is not registered; use one of "
         f"{sorted(available_objectives())}.")
  refuse_moved(config)
  g = config.rollout.group_size
  if g < 1:
    fail("rollout.group_size", f"must be >= 1, got {g}.")
  if config.batch_size <= 0:
    fail("batch_size", f"must be positive, got {config.batch_size}.")
  if config.batch_size % g:
    fail("batch_size", f"{config.batch_size} is not a multiple of rollout.group_size={g}: "
         "each prompt is sampled group_size times.")
  if config.ppo_epochs < 1:
    fail("ppo_epochs", "must be >= 1.")
  if config.ppo_minibatches < 1 or config.batch_size % (config.ppo_minibatches * g):
    fail("ppo_minibatches", f"{config.ppo_minibatches} must split batch_size="
         f"{config.batch_size} into minibatches of whole groups of {g}.")
  mini = config.batch_size // max(config.ppo_minibatches, 1)
  if config.grad_accum_steps < 1 or mini % (config.grad_accum_steps * g):
    fail("grad_accum_steps", f"{config.grad_accum_steps} must split each minibatch of "
         f"{mini} rows into microbatches of whole groups of {g}.")
  if config.num_steps < 0:
    fail("num_steps", "must be >= 0.")
  if not 0.0 <= config.calibrate_budget_quantile < 1.0:
    fail("calibrate_budget_quantile", "must be in [0, 1); 0 turns calibration off.")
  if config.calibration_samples_per_prompt < 0:
    fail("calibration_samples_per_prompt", "must be >= 0 (0 = rollout.group_size).")
  per_prompt = config.calibration_samples_per_prompt or g
  rows = config.calibration_batch_size or config.batch_size
  if config.calibration_batch_size < 0 or rows % per_prompt:
    fail("calibration_batch_size", f"{rows} sequences a pass (0 = batch_size) must be a "
         f"positive multiple of the {per_prompt} samples of each calibration question "
         "(calibration_samples_per_prompt, 0 = rollout.group_size).")
  if config.rollout.max_new_tokens < 1:
    fail("rollout.max_new_tokens", "must be >= 1.")
  if config.rollout.temperature <= 0:
    fail("rollout.temperature", "must be > 0 for training rollouts.")
  if config.rollout.top_k or config.rollout.top_p < 1.0:
    fail("rollout.top_k" if config.rollout.top_k else "rollout.top_p",
         "training rollouts must sample the policy itself (the PPO ratio and the KL are "
         "taken under it); set top_k=0 and top_p=1.0 (temperature is fine).")
  if not 0.0 <= config.rollout.on_policy_fraction <= 1.0:
    fail("rollout.on_policy_fraction", "must be in [0, 1].")
  if config.data.prompt_format not in data.PROMPT_FORMATS:
    fail("data.prompt_format", f"{config.data.prompt_format!r}; use one of "
         f"{data.PROMPT_FORMATS}.")
  if isinstance(config.rollout.stop_tokens, str) or not all(
      isinstance(t, str) and t for t in config.rollout.stop_tokens):
    fail("rollout.stop_tokens", f"{config.rollout.stop_tokens!r}; give a tuple of non-empty "
         "texts, e.g. ('\\n',).")
  if config.rollout.sft_source not in ("reference", "teacher"):
    fail("rollout.sft_source", "use 'reference' or 'teacher'.")
  for field, value in zip(("teacher.param_dtype", "student.param_dtype"), param_dtypes(config)):
    if value not in ("float32", "bfloat16"):
      fail(field, f"{value!r}; use 'float32' or 'bfloat16' ('' for the teacher: its dtype).")
  if config.rollout.teacher_logits_dtype not in ("float32", "bfloat16"):
    fail("rollout.teacher_logits_dtype", "use 'float32' or 'bfloat16'.")
  if config.optimizer.name not in ("adamw", "adam", "sgd"):
    fail("optimizer.name", f"{config.optimizer.name!r}; use adamw, adam or sgd.")
  if config.optimizer.schedule not in ("constant", "cosine", "linear"):
    fail("optimizer.schedule", f"{config.optimizer.schedule!r}; use constant, cosine or linear.")
  if config.optimizer.learning_rate < 0:
    fail("optimizer.learning_rate", "must be >= 0.")
  ds = config.dynamic_sampling
  if ds.generation_prompts < 0 or (ds.generation_prompts and jax.process_count() > 1 and
                                   ds.generation_prompts % jax.process_count()):
    fail("dynamic_sampling.generation_prompts", f"{ds.generation_prompts} must be 0 (the "
         "step's prompts) or a positive number of prompts that splits over the processes.")
  if ds.max_generation_batches < 1:
    fail("dynamic_sampling.max_generation_batches", "must be >= 1.")
  if ds.enabled and not get_objective(config.objective).on_policy:
    fail("dynamic_sampling.enabled", f"objective {config.objective!r} trains on reference "
         "text, not on rollouts to filter; set dynamic_sampling.enabled=False.")
  if (ds.enabled and config.rollout.on_policy_fraction < 1 and ds.generation_prompts
      and ds.generation_prompts != config.batch_size // g):
    fail("dynamic_sampling.generation_prompts", f"{ds.generation_prompts}: with off-policy "
         "steps (rollout.on_policy_fraction < 1) a generation batch is also an off-policy "
         f"step's prompts; use 0 or the step's {config.batch_size // g}.")
  if ds.enabled and ds.keep_teacher_logits and (config.mesh.teacher_disjoint
                                                 or config.mesh.teacher_tensor > 0):
    fail("dynamic_sampling.keep_teacher_logits", "the teacher has devices of its own "
         "(mesh.teacher_disjoint / teacher_tensor) and hands its logits over per "
         "microbatch; set keep_teacher_logits=False.")
  if ds.at_cap not in ("proceed", "error"):
    fail("dynamic_sampling.at_cap", f"{ds.at_cap!r}; use 'proceed' or 'error'.")
  if config.data.max_prompt_len < 1:
    fail("data.max_prompt_len", "must be >= 1.")
  if config.eval.pass_k < 0:
    fail("eval.pass_k", "must be >= 0 (0 = greedy only).")
  if config.heal.steps < 0:
    fail("heal.steps", "must be >= 0 (0 = no heal).")
  if config.heal.steps and config.student.init_workdir:
    fail("heal.steps", f"the student already starts from student.init_workdir="
         f"{config.student.init_workdir!r}; set heal.steps=0 or clear init_workdir.")
  if config.heal.steps and config.heal.batch_size < 1:
    fail("heal.batch_size", "must be >= 1.")
  s = config.student
  if s.refit_samples < 0:
    fail("student.refit_samples", "must be >= 0 (0 = no refit).")
  if s.refit_samples and (not s.cut_layers or s.path):
    fail("student.refit_samples", "only a student cut from the teacher (student.cut_layers, "
         "no student.path) is refitted; set refit_samples=0.")
  if s.refit_samples and s.init_workdir:
    fail("student.refit_samples", f"the student already starts from student.init_workdir="
         f"{s.init_workdir!r}; set refit_samples=0 or clear init_workdir.")
  if s.refit_samples and s.refit_ridge <= 0:
    fail("student.refit_ridge", "must be > 0.")
  # Bad loss fields, fields the objective ignores, and contradictions of its preset.
  get_objective(config.objective).check_fields(objective_config(config))


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config file's argument `"key=value,flag,..."` (as in `file.py:objective=grpo,small`).

  Each key must be one of `defaults`; values are converted to the default's type; a bare
  `flag` means `flag=True`.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; valid: {sorted(defaults)}.")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.strip().lower() not in ("0", "false", "no") if value else True
    else:
      try:
        out[key] = kind(value.strip()) if value else kind()
      except ValueError:
        raise ValueError(f"config argument {key}={value.strip()!r}: {kind.__name__} expected, "
                         f"like its default {defaults[key]!r}.") from None
  return ml_collections.ConfigDict(out)


def config_module(path: str, name: str | None = None):
  """The module of the config file `path` (run once, not registered as an import), e.g. a
  config reading another one's constants or `get_config`; `name` relative to the directory
  of `path` when given (`config_module(__file__, "smollm2_sums.py")`: a sibling file)."""
  if name is not None:
    path = os.path.join(os.path.dirname(os.path.abspath(path)), name)
  stem = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"configs_{stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
