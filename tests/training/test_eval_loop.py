"""The end-of-run report's line on what the steps trained on, from metrics.jsonl rows."""
from cmdp.training import eval_loop


def _row(skipped, contrast, batches=None, kept=None, drawn=None):
  row = {"train/skipped": skipped, "train/groups_with_contrast": contrast, "train/loss": 0.1}
  if batches is not None:
    row.update({"train/generation_batches": batches, "train/groups_kept": kept,
                "train/contrast_drawn": drawn})
  return row


def test_training_summary_counts_skipped_steps_and_kept_groups():
  rows = [{"probe/kl_seq_mean": 1.0}, _row(0.0, 1.0, 1.0, 4.0, 1.0),
          _row(1.0, 0.0, 4.0, 0.0, 0.0), _row(0.0, 0.5, 2.0, 3.0, 0.375),
          {"eval/student/accuracy": 0.5}]
  # By hand: 1 of 3 skipped; contrast in every group at step 1 only; (1 + 4 + 2) / 3 = 2.33
  # batches, at most 4; 4 + 0 + 3 = 7 groups kept; (1 + 0 + 0.375) / 3 = 45.8% with contrast.
  assert eval_loop.training_summary(rows) == (
      "Training: 3 logged steps, 1 skipped (no gradient: params and optimiser state "
      "unchanged); every group had contrast in 1 of 3; dynamic sampling: 2.33 generation "
      "batches a step (at most 4), 7 groups kept, 45.8% of the groups drawn had contrast.")


def test_training_summary_without_dynamic_sampling_or_steps():
  assert eval_loop.training_summary([_row(0.0, 1.0)]) == (
      "Training: 1 logged step, 0 skipped (no gradient: params and optimiser state "
      "unchanged); every group had contrast in 1 of 1.")
  assert eval_loop.training_summary([{"probe/kl_seq_mean": 1.0}]) == ""
