"""Everything a run builds from its config once: meshes, models, data and compiled functions.

Shardings are decided here and nowhere else: the student's mesh and param specs, the
teacher's mesh (the same one, or its own devices), the batch spec, and the jitted
functions with their in/out shardings and donated buffers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import data, sharding, sources
from cmdp.data import heldout
from cmdp.objectives import ObjectiveConfig, get_objective
from cmdp.training import config as config_lib
from cmdp.training import models as model_lib
from cmdp.training import optimizer as optimizer_lib
from cmdp.training import processes, programs
from cmdp.training import step as step_lib


def build_meshes(mesh_cfg: ml_collections.ConfigDict, devices=None):
  """Returns `(student_mesh, teacher_mesh)`; they are one mesh unless configured apart.

  `devices` defaults to `jax.devices()` (every process's devices in a multi-host run); the
  planner passes a TPU topology's compile-only devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  if mesh_cfg.num_devices:
    if mesh_cfg.num_devices > len(devices):
      raise ValueError(f"config.mesh.num_devices={mesh_cfg.num_devices} but only "
                       f"{len(devices)} devices are visible.")
    devices = devices[:mesh_cfg.num_devices]
  if not mesh_cfg.teacher_disjoint and mesh_cfg.teacher_tensor <= 0:
    mesh = sharding.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices)
    return mesh, mesh
  if mesh_cfg.teacher_disjoint:
    if len(devices) < 2:
      raise ValueError("config.mesh.teacher_disjoint needs at least 2 devices.")
    half = len(devices) // 2
    s_dev, t_dev = devices[:half], devices[half:2 * half]
  else:
    s_dev = t_dev = devices
  student = sharding.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, s_dev)
  t_tensor = mesh_cfg.teacher_tensor if mesh_cfg.teacher_tensor > 0 else mesh_cfg.tensor
  teacher = sharding.make_mesh(-1, 1, t_tensor, t_dev)
  return student, teacher


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The built run (not a pytree: host-side handles to models, data and compiled steps).

  Frozen: a run whose budget is calibrated or restored gets a new one (`with_hp`), so no
  compiled function can keep an old `hp`.
  """
  config: ml_collections.ConfigDict
  student_mesh: Any
  teacher_mesh: Any
  teacher: model_lib.LoadedModel
  student: model_lib.LoadedModel
  tokenizer: Any
  train_examples: list
  test_examples: list
  hp: ObjectiveConfig

  def with_hp(self, hp: ObjectiveConfig) -> "Experiment":
    """The same experiment with another objective config (e.g. the calibrated budget)."""
    return dataclasses.replace(self, hp=hp)

  @property
  def objective(self):
    return get_objective(self.config.objective)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    ids = {self.tokenizer.eos_token_id}
    im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
      ids.add(im_end)
    ids.update(stop_token_ids(self.tokenizer, self.config.rollout.stop_tokens))
    return tuple(sorted(i for i in ids if i is not None))

  @property
  def pad_id(self) -> int:
    pad = self.tokenizer.pad_token_id
    return int(pad if pad is not None else self.tokenizer.eos_token_id)

  def batch_sharding(self, mesh=None) -> NamedSharding:
    return NamedSharding(mesh or self.student_mesh, sharding.batch_spec())

  def put_batch(self, tree, mesh=None):
    """Places arrays `[B, ...]` on the mesh, rows split over the batch axes (scalars
    replicated).

    Host (numpy) arrays hold this process's rows: all of them in a one-process run; in a
    multi-process run, the rows this process's devices hold (a contiguous block, process
    order; see `cmdp.data.PromptIterator`'s `shard`), from which the global array is built
    (`jax.make_array_from_process_local_data`). jax Arrays are global already and only move
    (e.g. from the teacher's mesh to the student's).
    """
    s = self.batch_sharding(mesh)
    rep = NamedSharding(mesh or self.student_mesh, P())
    multi = jax.process_count() > 1

    def put(x):
      target = s if np.ndim(x) else rep
      if multi and not isinstance(x, jax.Array):
        return jax.make_array_from_process_local_data(target, np.asarray(x))
      return jax.device_put(x, target)
    return jax.tree.map(put, tree)

  # ---- compiled functions (built once per run) ----

  @functools.cached_property
  def optimizer(self):
    return optimizer_lib.make_optimizer(self.config.optimizer, self.config.num_steps)

  @property
  def teacher_inside_step(self) -> bool:
    """The teacher shares the student's mesh, so it runs inside the train step."""
    return self.teacher_mesh is self.student_mesh

  @property
  def step_config(self) -> step_lib.StepConfig:
    c = self.config
    references = c.rollout.sft_source == "reference" and (
        not self.objective.on_policy or c.rollout.on_policy_fraction < 1)
    return step_lib.StepConfig(grad_accum_steps=c.grad_accum_steps, ppo_epochs=c.ppo_epochs,
                               ppo_minibatches=c.ppo_minibatches,
                               teacher_logits_dtype=c.rollout.teacher_logits_dtype,
                               response_start=0 if references else self.response_start,
                               shared_prefix=self.shared_prefix,
                               group_prefix=0 if references else self.group_prefix,
                               skip_zero_grad=c.optimizer.skip_zero_grad)

  @property
  def group_prefix(self) -> int:
    """Leading columns of a rollout's step `inputs` that are the same in each prompt
    group's G rows (the sampler repeats each prompt, copies adjacent) and run once per
    group in every forward pass: the left-padded prompt up to `response_start`. Its last
    token stays in every row's own pass, whose logits then cover the whole response
    window (no `[B, window, V]` concatenation). 0 without groups."""
    if self.hp.group_size < 2:
      return 0
    return self.response_start

  @property
  def response_start(self) -> int:
    """The first column of a rollout's `[B, L]` step fields that can hold a response token:
    the sampler writes every response after `max_prompt_len` left-padded prompt slots, so
    no logits are needed before it (the step uses 0 when the run also trains on reference
    solutions, which are right-padded)."""
    return self.config.data.max_prompt_len - 1

  def make_train_step(self, hp: ObjectiveConfig, state_shardings, step_config=None):
    """The update `(state, teacher_params, batch) -> (state, metrics)`
    (cmdp.training.programs): one compiled program with the teacher inside it, or, for a
    teacher on its own mesh, compiled parts driven per microbatch from the host, the
    teacher's logits handed over one microbatch at a time. `step_config` (default
    `self.step_config`): the step's layout, e.g. without the group prefix for a benchmark."""
    return programs.train_step(self.objective, hp, self.student.config, self.optimizer,
                               step_config or self.step_config, self.student_mesh,
                               state_shardings, self.teacher.config, self.teacher_mesh,
                               optimizer_lib.learning_rate_schedule(self.config.optimizer,
                                                                    self.config.num_steps))

  @property
  def step_teacher_params(self):
    """What the train step takes as `teacher_params`: the teacher's, on its mesh."""
    return self.teacher.params

  def teacher_logits(self, inputs, input_mask):
    """Teacher logits `[B, L - response_start, V]` (the response window) of a whole batch
    of rollout arrays, computed on the teacher's mesh and moved to the student's: for
    scoring sequences (calibration, evaluation) with a teacher on its own devices. The
    train step never takes them: it scores microbatch by microbatch."""
    fn = programs.teacher_logits(self.teacher.config, self.teacher_mesh,
                                 self.config.rollout.teacher_logits_dtype, None,
                                 self.response_start, self.shared_prefix)
    if self.teacher_mesh is not self.student_mesh:
      inputs, input_mask = self.put_batch((inputs, input_mask), self.teacher_mesh)
    out = fn(self.teacher.params, inputs, input_mask)
    if self.teacher_mesh is not self.student_mesh:
      out = jax.device_put(out, self.batch_sharding())
    return out

  def sampler(self, model: str = "student", *, greedy: bool = False,
              max_new_tokens: int | None = None, temperature: float | None = None,
              group_size: int = 1):
    """A compiled sampler for the student (or teacher) with the rollout settings; with
    `group_size` > 1 it takes each prompt once (placed by `put_prompts`) and samples it
    `group_size` times, repeating the rows inside the program."""
    r = self.config.rollout
    m = self.student if model == "student" else self.teacher
    mesh = self.student_mesh if model == "student" else self.teacher_mesh
    return programs.sampler(m.config, mesh, max_new_tokens or r.max_new_tokens,
                            r.temperature if temperature is None else temperature, r.top_k,
                            r.top_p, greedy, self.eos_ids, self.pad_id, group_size,
                            self.shared_prefix)

  def put_prompts(self, tree, mesh=None):
    """Places un-repeated prompts `[n, P]` (host arrays of this process's rows) for a
    sampler with `group_size` > 1: rows over the batch axes when the step's prompts split
    over them, else replicated (`sharding.rows_spec`, as `Sampler.prompt_spec`)."""
    mesh = mesh or self.student_mesh
    rows = np.shape(jax.tree.leaves(tree)[0])[0] * jax.process_count()
    if sharding.rows_spec(rows, mesh) == sharding.batch_spec():
      return self.put_batch(tree, mesh)
    target = NamedSharding(mesh, P())
    if jax.process_count() > 1:  # every process's prompts, in process order
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
          target, processes.rows_over_processes(x)), tree)
    return jax.device_put(tree, target)

  def shift_batch(self, tokens, attention_mask, action_mask, logprobs=None) -> dict:
    """The train step's fields of `[B, T]` sequences on the student's mesh (one compiled
    program, `programs.shift_batch`); without `logprobs`, `old_logprobs` are zeros."""
    fn = programs.shift_batch(self.student_mesh, logprobs is not None)
    args = (tokens, attention_mask, action_mask) + (() if logprobs is None else (logprobs,))
    return fn(*args)

  def score_sequences(self, params, batch: dict, hp: ObjectiveConfig | None = None, *,
                      group_size: int = 1) -> dict:
    """Host numpy per-sequence scores (`cmdp.objectives.sequence_scores`: the constraint's
    cost, satisfaction, KL(student||teacher) sum, length) of a batch from
    `batch_lib.from_rollout`, for the deployed student with `params`: of every row in a
    one-process run, else of this process's rows (`processes.process_rows`; combine them
    with `processes.rows_over_processes`).

    `group_size`: the batch's rows come in groups of this many with one prompt each (a
    `make_batch` rollout), whose prompt columns then run once per group, as in the train
    step (the same scores for about a third less compute on short answers); 1: per row."""
    batch = dict(batch)
    teacher_params = self.teacher.params if self.teacher_inside_step else None
    if teacher_params is None:
      batch["teacher_logits"] = self.teacher_logits(batch["inputs"], batch["input_mask"])
    prefixes = dict(shared_prefix=self.shared_prefix)
    if group_size > 1:
      prefixes.update(group_prefix=self.response_start, group_size=group_size)
    fn = programs.scorer(self.student.config, self.teacher.config, hp or self.hp,
                         self.config.rollout.teacher_logits_dtype, self.response_start,
                         tuple(sorted(prefixes.items())))
    scores = fn(params, teacher_params, batch)
    if jax.process_count() > 1:  # each process's rows where the batch has them
      scores = jax.device_put(scores, self.batch_sharding())
    return processes.process_rows(scores)

  @property
  def keeps_teacher_logits(self) -> bool:
    """Dynamic sampling's signal pass hands the teacher's logits of the kept rows to the
    step (`dynamic_sampling.keep_teacher_logits`; only for an objective that reads the
    teacher, whose forward runs inside the step: otherwise the option is ignored)."""
    ds = self.config.dynamic_sampling
    return bool(ds.enabled and ds.keep_teacher_logits and self.teacher_inside_step
                and self.objective.needs_teacher)

  def row_signal(self, params, batch: dict, objective_state, keep_teacher_logits=False):
    """Host bool `[B]`: which rows of a training batch (`make_batch`'s, with its
    `task_reward`) give the objective's loss a nonzero gradient for the student `params`
    (`step.make_grad_fn`'s signal: the loss's gradient with respect to the logits, no
    backward pass through the model); this process's rows, as `score_sequences`.

    `keep_teacher_logits` (the teacher inside the step): returns `(signal, logits)`, with
    the teacher's window logits `[B, W, V]` of the whole batch left on the student's
    devices, in `rollout.teacher_logits_dtype`."""
    batch = dict(batch)
    teacher_params = self.teacher.params if self.teacher_inside_step else None
    if teacher_params is None and self.objective.needs_teacher:
      batch["teacher_logits"] = self.teacher_logits(batch["inputs"], batch["input_mask"])
    sc = self.step_config
    fn = programs.row_signal(self.config.objective, self.hp, self.student.config,
                             self.teacher.config if teacher_params is not None else None,
                             sc.teacher_logits_dtype, sc.response_start,
                             tuple(sorted(sc.prefixes(self.hp.group_size).items())),
                             self.student_mesh, keep_teacher_logits)
    signal, logits = (fn if keep_teacher_logits else lambda *a: (fn(*a), None))(
        params, teacher_params, batch, objective_state)
    if jax.process_count() > 1:
      signal = jax.device_put(signal, self.batch_sharding())
    signal = np.asarray(processes.process_rows(signal), bool)
    return (signal, logits) if keep_teacher_logits else signal

  # ---- prompts ----

  def prompt_text(self, question: str) -> str:
    """The chat prompt of one question (system prompt and few-shot turns from the config)."""
    cfg = self.config.data
    kw = {"system_prompt": cfg.system_prompt} if cfg.system_prompt else {}
    return data.build_prompt(self.tokenizer, question, few_shot=tuple(cfg.few_shot),
                             prompt_format=cfg.prompt_format, **kw)

  @functools.cached_property
  def prompt_prefix(self) -> tuple[int, ...]:
    """The token ids every prompt of the run begins with (the instruction and few-shot
    examples: `data.common_prefix` of the train and test prompts); () when
    `data.share_prompt_prefix` is off or some prompt is longer than `data.max_prompt_len`
    (it is cut from the left, prefix first), and for the planner's abstract experiment (no
    tokenizer: it costs the unshared layout, an upper bound). Every forward pass and
    prefill runs them once per batch, as one row."""
    if not self.config.data.share_prompt_prefix or self.tokenizer is None:
      return ()
    texts = [self.prompt_text(ex.question) for ex in self.train_examples + self.test_examples]
    return data.common_prefix(self.tokenizer, texts, self.config.data.max_prompt_len)

  @property
  def shared_prefix(self) -> int:
    """How many leading columns of every prompt (and of the step's `inputs`) are the
    shared `prompt_prefix`."""
    return len(self.prompt_prefix)

  def encode_prompts(self, examples: list) -> tuple[np.ndarray, np.ndarray]:
    """`[len(examples), max_prompt_len]` prompts: the shared `prompt_prefix` first, then
    each prompt's own tokens, left padded (`data.encode_prompts`)."""
    return data.encode_prompts(self.tokenizer, [self.prompt_text(ex.question) for ex in examples],
                               self.config.data.max_prompt_len, self.prompt_prefix)


def stop_token_ids(tokenizer, stops) -> list[int]:
  """The ids of `config.rollout.stop_tokens`: each text must be exactly one token."""
  ids = []
  for text in stops:
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(tokens) != 1:
      raise ValueError(f"config.rollout.stop_tokens: {text!r} is {len(tokens)} tokens "
                       f"({tokens}) for this tokenizer; each stop must be one token.")
    ids.append(int(tokens[0]))
  return ids


def _load_split(config: ml_collections.ConfigDict, which: str) -> list:
  """The examples of "train", or of the test split's "test" or "calibration" part
  (`cmdp.data.heldout.load_parts`: `data.test_size` and `calibration_prompts` distinct
  questions)."""
  d = config.data
  spec = d.train if which == "train" else d.test
  size = d.train_size if which == "train" else d.test_size
  field = "train" if which == "train" else "test"  # the config field of its task
  task = spec.get("task") if hasattr(spec, "get") else spec
  kind = str(task).split(":", 1)[0]
  if d.task_kwargs and kind in (sources.GSM8K, sources.MATH):  # a file task after a reasoning-gym config
    raise ValueError(f"config.data.{field}={task!r} is a {kind} file, which takes none of "
                     f"config.data.task_kwargs {sorted(d.task_kwargs)} (reasoning-gym task "
                     "arguments): clear them with --config.data.task_kwargs='{}'.")
  # Procedural tasks keep train and test questions apart; files have their splits.
  try:
    if which == "train":
      examples = data.load_task(spec, split=which, size=size, seed=config.seed,
                                **d.task_kwargs.to_dict())
    else:
      examples = heldout_parts(config)[0 if which == "test" else 1]
  except (FileNotFoundError, RuntimeError) as e:  # a missing directory, an unreachable hub
    raise FileNotFoundError(f"config.data.{field}={spec!r}: {e}") from e
  if not examples:
    raise ValueError(f"config.data.{field}: the {which} examples of {spec!r} are empty.")
  return examples


def heldout_parts(config: ml_collections.ConfigDict) -> tuple[list, list, int]:
  """`(evaluated, calibration, repeats dropped)`: the parts of `config.data.test`'s test
  split (`cmdp.data.heldout.load_parts`), `data.test_size` and `calibration_prompts`
  questions."""
  d = config.data
  return heldout.load_parts(d.test, d.test_size, config.calibration_prompts, config.seed,
                            **d.task_kwargs.to_dict())


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Validates the config and builds the experiment (models placed on their meshes)."""
  config_lib.validate(config)
  hp = config_lib.objective_config(config)
  student_mesh, teacher_mesh = build_meshes(config.mesh)
  teacher, student, tokenizer = model_lib.load_teacher_and_student(
      config, jax.random.key(config.seed))
  teacher = model_lib.LoadedModel(
      teacher.config, sharding.shard_params(teacher.params, teacher_mesh, teacher.config))
  student = model_lib.LoadedModel(
      student.config, sharding.shard_params(student.params, student_mesh, student.config))
  train = _load_split(config, "train")
  shards = student_mesh.shape["data"] * student_mesh.shape["fsdp"]
  if config.batch_size % shards:
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of the mesh's "
                     f"data*fsdp={shards} (each device holds whole rows).")
  return Experiment(config=config, student_mesh=student_mesh, teacher_mesh=teacher_mesh,
                    teacher=teacher, student=student, tokenizer=tokenizer,
                    train_examples=train, test_examples=_load_split(config, "test"), hp=hp)
