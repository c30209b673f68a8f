"""Objectives, registered by name, pure functions of logits.

    objective = get_objective("cmdp")
    state = objective.init_state(hp)
    loss, metrics = objective.loss_fn(student_logits, teacher_logits, batch, hp, state)
    state = objective.update_state(state, metrics, hp)        # after the optimiser step

`student_logits [B, L, V]` float32 raw student logits (differentiable; the sampling policy
is `softmax(logits / hp.temperature)`); `teacher_logits [B, L, V]` the teacher's at the same
positions (None for objectives without a teacher); `hp` an `ObjectiveConfig` (static);
`state` the objective's own state (the Lagrange multiplier of `dual_lagrangian`; None for
the others). See docs/method.md for the equations.

The batch (built by the trainer), all fields aligned per target position (the logits at
position t predict `targets[:, t]`):

    targets         int32 [B, L]        next tokens (inputs shifted by one)
    mask            f32   [B, L]        1 where the target is a response / supervised token
    old_logprobs    f32   [B, L]        log of the sampling policy at the targets (0 off mask)
    ref_logprobs    f32   [B, L]        optional log pi_ref(target) (grpo's ref_kl_coef)
    task_reward     f32   [B]           R(x, y)
    num_tokens      f32   []            mask tokens in the FULL batch (all microbatches)
    num_sequences   f32   []            sequences in the FULL batch

Rows come in contiguous groups of `hp.group_size` samples of one prompt; a microbatch
holds whole groups. Each microbatch's loss AND metrics are normalised by the full-batch
counts, so summing them over microbatches gives the full-batch gradient and metrics.

| name | objective (module) |
| --- | --- |
| grpo | task reward, group baseline, PPO clip (grpo.py) |
| cmdp | Sauté-augmented reward + exact cost gradient (cmdp_reward.py) |
| worst_case | cmdp under its preset: teacher_nll cost, prefix_mean constraint, constant penalty |
| cmdp_hinge | Sauté's withheld reward + the hinge n (C - d)_+ / d with its pathwise gradient (cmdp_reward.py) |
| soft_lagrangian | R - lambda C(y), lambda fixed (lagrangian.py) |
| dual_lagrangian | the same with lambda learned by dual ascent on E[C] or P(C > d) (lagrangian.py) |
| gkd | per-token generalized JSD(beta) teacher/student (distill.py) |
| minillm | reverse KL by policy gradient + exact single-step term (distill.py) |
| sft | cross-entropy on mask tokens (distill.py) |
"""
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.registry import (Objective, available_objectives, get_objective,
                                      register_objective)
# Importing the families registers their objectives.
from cmdp.objectives import cmdp_reward, distill, grpo, lagrangian  # noqa: E402,F401  isort: skip
from cmdp.objectives.common import sequence_scores, step_metrics
from cmdp.objectives.lagrangian import LambdaState, init_lambda_state, update_lambda

__all__ = ["ObjectiveConfig", "Objective", "available_objectives", "get_objective",
           "register_objective", "sequence_scores", "step_metrics", "LambdaState", "init_lambda_state",
           "update_lambda"]
