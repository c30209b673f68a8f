"""Hyper-parameters of every objective: one frozen, hashable dataclass (static under jit).

Defaults follow docs/method.md. Each objective reads only the fields it needs; the
others are ignored. `ObjectiveConfig.from_dict` builds one from a plain dict (e.g. an
`ml_collections` config's `loss` field) and names any unknown key or bad value, with the
fix, in a ValueError. Direct construction validates the same way.
"""
from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any, Mapping

from cmdp.constraint import COST_KINDS as COSTS
from cmdp.constraint import CONSTRAINTS, PENALTIES, PENALTY_UNITS

ADVANTAGES = ("loo", "grpo", "none")
DUAL_TARGETS = ("mean", "rate")
AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_mean_token_mean")


def _choice(default: str, choices: tuple[str, ...]):
  """A string field that takes one of `choices` (checked at construction)."""
  return dataclasses.field(default=default, metadata={"choices": choices})


# The check of each non-string field, from its annotation (`from __future__ import
# annotations` keeps it as the text written).
_TYPES = {"float": float, "int": int, "bool": bool}


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Objective hyper-parameters. Units: costs in nats; "per token" / "per sequence" as named.

  The defaults make every policy-gradient estimator unbiased (docs/method.md): a
  leave-one-out baseline, no data-dependent scale, and the per-sequence sum of token terms.
  """

  # --- The constraint: one definition, read by the reward, the metrics, calibration and
  # evaluation (cmdp.objectives.sequence_scores) ---
  # d: threshold of the constraint. Units: nats per sequence for "sum", nats per token for
  # "mean" and "prefix_mean".
  budget: float = 20.0
  cost: str = _choice("reverse_kl", COSTS)  # per-token cost c_t: reverse_kl | logratio | teacher_nll
  constraint: str = _choice("sum", CONSTRAINTS)  # sum_t c_t <= d | mean: (1/T) sum_t c_t <= d | prefix_mean
  cost_discount: float = 1.0  # gamma_c: the constraint weighs token t's cost by gamma_c^t
  # --- The Sauté reward (cmdp, worst_case, cmdp_hinge) ---
  # p_t on violated tokens (docs/method.md): terminal (-n once, when the budget runs out:
  # Sauté's constant unsafe reward) | constant (-n on every violated token) | scaled
  # (-n c_t / D) | constant_plus_scaled (-n - c_t / D); cmdp_hinge ignores it
  penalty: str = _choice("terminal", PENALTIES)
  penalty_scale: float = 1.0  # n in the penalty, in task-reward units
  # D, the unit of a cost inside a penalty: budget (the per-sequence budget: d for sum, d T
  # for mean and prefix_mean, so overshooting by one budget costs n rewards) | nats (1)
  penalty_units: str = _choice("budget", PENALTY_UNITS)
  pay_reward_if_violated: bool = False  # still pay R at the end of a violating response
  # beta, cmdp's boundary term (docs/method.md): the jump of the return where the flag
  # fires ((R + n) k_h(C - d) for terminal) on the exact cost gradient, k_h the logistic
  # kernel of width h = beta d; 0 = off (worst_case and cmdp_hinge do not read it)
  boundary_width: float = 0.1
  # --- Memory ---
  chunk_size: int = 0  # time chunk for the exact-vocabulary terms (KL, entropy, log-probs); 0 = off
  # --- Policy gradient ---
  # The policy is softmax(logits / temperature); the trainer sets it from rollout.temperature.
  # Costs, the constraint and the distillation losses read the deployed student (logits / 1).
  temperature: float = 1.0
  gamma: float = 1.0  # return discount: G_t = sum_{k>=t} gamma^(k-t) r_k
  # samples per prompt; rows come in contiguous groups of this size. The trainer sets it
  # from rollout.group_size (a batch-shape setting, not the objective's).
  group_size: int = 8
  # baseline: loo (leave-one-out group mean: unbiased) | grpo (group mean incl. the sample:
  # the expected gradient shrinks by (G-1)/G, exact terms shrink with it) | none
  advantage: str = _choice("loo", ADVANTAGES)
  # divide the advantages by the RMS of the group's advantages (bounded, but biased): off
  normalize_std: bool = False
  clip_eps: float = 0.2  # PPO ratio clip: ratio kept in [1 - eps, 1 + eps]
  # truncated importance sampling: weight each token's surrogate by
  # min(pi_trainer / pi_sampler, tis_cap) when the sampler's numerics differ (0 = off)
  tis_cap: float = 0.0
  # sequence_mean (sum over tokens / sequences: unbiased) | token_mean |
  # sequence_mean_token_mean (the last two divide by the sampled length: biased)
  aggregation: str = _choice("sequence_mean", AGGREGATIONS)
  entropy_coef: float = 0.0  # entropy bonus weight (policy-gradient objectives)
  ref_kl_coef: float = 0.0  # grpo, *_lagrangian: weight of the k3 estimate of kl(student||ref)
  # --- Distillation baselines ---
  gkd_beta: float = 0.5  # gkd: 0 = kl(teacher||student), 1 = kl(student||teacher), JSD between
  # --- Lagrangian baselines: reward R - lambda * C(y), C the constraint's per-sequence cost ---
  soft_lambda: float = 0.01  # soft_lagrangian: fixed lambda (reward per unit of C)
  # dual_lagrangian: mean (E[C] <= d) | rate (P(C > d) <= violation_target)
  dual_target: str = _choice("mean", DUAL_TARGETS)
  violation_target: float = 0.1  # dual_lagrangian rate: the allowed violation rate delta
  lambda_init: float = 0.0  # dual_lagrangian: initial multiplier
  # dual_lagrangian: each update moves lambda * d (the penalty, in reward units, of a response
  # exactly at the budget) by lambda_lr times the violation: (mean C - d) / d or rate - delta
  lambda_lr: float = 1.0
  lambda_max: float = 100.0  # dual_lagrangian: cap of the multiplier
  lambda_warmup_steps: int = 0  # dual_lagrangian: updates before which lambda stays at lambda_init

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      kind = f.metadata.get("choices") or _TYPES[f.type]
      if kind is bool:
        if not isinstance(value, bool):
          _fail(f.name, value, "must be true or false")
      elif kind is int:
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not float(value).is_integer()):
          _fail(f.name, value, "must be an integer")
        object.__setattr__(self, f.name, int(value))
      elif kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
          _fail(f.name, value, "must be a number")
        object.__setattr__(self, f.name, float(value))
      elif value not in kind:
        _fail(f.name, value, f"use one of {kind}")
    checks = (
        ("budget", self.budget > 0, "must be > 0 (nats); set it or calibrate it"),
        ("penalty_scale", self.penalty_scale > 0, "must be > 0"),
        ("boundary_width", self.boundary_width >= 0, "must be >= 0 (0 = off)"),
        ("cost_discount", 0 < self.cost_discount <= 1, "must be in (0, 1]"),
        ("temperature", self.temperature > 0, "must be > 0 (set rollout.temperature)"),
        ("violation_target", 0 <= self.violation_target < 1, "must be in [0, 1)"),
        ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
        ("group_size", self.group_size >= 1, "must be >= 1 (set rollout.group_size)"),
        ("chunk_size", self.chunk_size >= 0, "must be >= 0 (0 = unchunked)"),
        ("clip_eps", self.clip_eps > 0, "must be > 0 (e.g. 0.2)"),
        ("tis_cap", self.tis_cap == 0 or self.tis_cap >= 1, "must be 0 (off) or >= 1 (e.g. 2)"),
        ("entropy_coef", self.entropy_coef >= 0, "must be >= 0"),
        ("ref_kl_coef", self.ref_kl_coef >= 0, "must be >= 0 (0 = off)"),
        ("gkd_beta", 0 <= self.gkd_beta <= 1, "must be in [0, 1]"),
        ("soft_lambda", self.soft_lambda >= 0, "must be >= 0"),
        ("lambda_lr", self.lambda_lr > 0, "must be > 0"),
        ("lambda_max", self.lambda_max > 0, "must be > 0"),
        ("lambda_init", 0 <= self.lambda_init <= self.lambda_max,
         f"must be in [0, lambda_max={self.lambda_max}]"),
        ("lambda_warmup_steps", self.lambda_warmup_steps >= 0, "must be >= 0"),
    )
    for name, ok, fix in checks:
      if not ok:
        _fail(name, getattr(self, name), fix)

  def replace(self, **kw) -> "ObjectiveConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ObjectiveConfig":
    """Builds a config from a dict; unknown keys and bad values raise ValueError."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
      hints = []
      for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
      raise ValueError(f"ObjectiveConfig: unknown key(s) {', '.join(hints)}; "
                       f"valid keys: {valid}.")
    return cls(**dict(d))


def _fail(name, value, fix):
  raise ValueError(f"ObjectiveConfig.{name}={value!r}: {fix}.")
