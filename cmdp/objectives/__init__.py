"""Objectives, registered by name, sharing one policy-gradient core.

    objective = get_objective("cmdp")
    loss, metrics = objective.loss_fn(params, batch, apply_fn=apply_fn, hp=hp, lam=lam)

`apply_fn(params, inputs, input_mask) -> float32 logits [B, L, V]` is the student forward;
`hp` an `ObjectiveConfig` (static); `lam` a [] array, the current Lagrange multiplier
(read only by objectives with `uses_lambda`).

The batch (built by the trainer), all fields aligned per target position (the logits at
position t predict `targets[:, t]`):

    inputs          int32 [B, L]        tokens fed to the model (prompt left padded + response)
    targets         int32 [B, L]        next tokens (inputs shifted by one)
    input_mask      bool  [B, L]        real input tokens (attention mask)
    mask            f32   [B, L]        1 where the target is a response / supervised token
    old_logprobs    f32   [B, L]        log pi_old(target) from the sampler (0 off mask)
    teacher_logits  f32/bf16 [B, L, V]  teacher logits at the same positions (or absent)
    ref_logprobs    f32   [B, L]        optional log pi_ref(target) (grpo's ref_kl_coef)
    task_reward     f32   [B]           R(x, y)
    num_tokens      f32   []            mask tokens in the FULL batch (all microbatches)
    num_sequences   f32   []            sequences in the FULL batch

Rows come in contiguous groups of `hp.group_size` samples of one prompt; a microbatch
holds whole groups. Each microbatch's loss is normalised by the full-batch counts, so
summing microbatch gradients gives the full-batch gradient. Metrics are means over the
microbatch (the trainer averages them), keys without namespace.

| name | objective (module) |
| --- | --- |
| grpo | task reward, group-normalised advantages, PPO clip (grpo.py) |
| cmdp | Sauté-augmented reward + exact single-step KL term (cmdp_reward.py) |
| worst_case | cmdp with teacher_nll cost, prefix_mean constraint, constant penalty |
| soft_lagrangian | grpo + fixed lambda * per-token kl(student||teacher) (lagrangian.py) |
| dual_lagrangian | the same with lambda learned by dual ascent (lagrangian.py) |
| gkd | per-token generalized JSD(beta) teacher/student (distill.py) |
| minillm | reverse KL by policy gradient + exact single-step term (distill.py) |
| sft | cross-entropy on mask tokens (distill.py) |
"""
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.registry import (Objective, available_objectives, get_objective,
                                      register_objective)
# Importing the families registers their objectives.
from cmdp.objectives import cmdp_reward, distill, grpo, lagrangian  # noqa: E402,F401  isort: skip
from cmdp.objectives.lagrangian import (LambdaState, init_lambda_state, lambda_value,
                                        update_lambda)

__all__ = ["ObjectiveConfig", "Objective", "available_objectives", "get_objective",
           "register_objective", "LambdaState", "init_lambda_state", "lambda_value",
           "update_lambda"]
