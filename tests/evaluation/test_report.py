"""The end-of-run table against hand-computed intervals."""
import math

from cmdp.evaluation import report


def test_table_has_wilson_and_t_intervals():
  # 50 of 100 right: Wilson 95% interval [40.4, 59.6]; KL mean 10, sd 5, n 100:
  # t(0.975, 99) = 1.9842 -> half-width 0.99.
  results = {"student": {"accuracy": 0.5, "num_greedy": 100, "satisfaction_greedy": 0.5,
                         "kl_seq_greedy_mean": 10.0, "kl_seq_greedy_std": 5.0},
             "teacher": {"accuracy": 0.9, "num_greedy": 100}}
  text = report.table(results)
  rows = text.strip().splitlines()
  assert rows[2].startswith("| teacher |") and rows[3].startswith("| student |")
  assert "50.0% [40.4, 59.6]" in rows[3]
  assert "10.00 ± 0.99" in rows[3]
  z = 1.959964
  centre = (0.5 + z * z / 200) / (1 + z * z / 100)
  half = z / (1 + z * z / 100) * math.sqrt(0.25 / 100 + z * z / 40000)
  assert round(100 * (centre - half), 1) == 40.4


def test_constraint_verdict_reads_the_end_against_the_start():
  start = {"satisfaction_sampled": 0.455}
  held = report.constraint_verdict({"initial_student": start,
                                    "student": {"satisfaction_sampled": 0.44}})
  assert "44.0%" in held and "45.5% at the start" in held and "is held" in held
  lost = report.constraint_verdict({"initial_student": start,
                                    "student": {"satisfaction_sampled": 0.23}})
  assert "is not held" in lost
  assert report.constraint_verdict({"student": {"satisfaction_sampled": 0.2}}) == ""


def test_table_reads_the_question_counted_intervals_and_the_reward_cost_figures():
  # eval.json's `_lo` / `_hi` (intervals over questions) are shown as they are.
  student = {"accuracy": 0.5, "accuracy_greedy": 0.5, "num_greedy": 100,
             "accuracy_greedy_lo": 0.3, "accuracy_greedy_hi": 0.7,
             "kl_seq_greedy_mean": 10.0, "kl_seq_greedy_std": 5.0,
             "kl_seq_greedy_mean_lo": 8.0, "kl_seq_greedy_mean_hi": 12.0,
             "corr_pearson_greedy": -0.25, "corr_spearman_greedy": -0.5,
             **{f"sequence_cost_greedy_right_q{q}": q / 100 for q in (10, 50, 90)},
             **{f"sequence_cost_greedy_wrong_q{q}": None for q in (10, 50, 90)}}
  row = report.table({"student": student}).strip().splitlines()[2]
  assert "50.0% [30.0, 70.0]" in row and "10.00 ± 2.00" in row
  joint = report.reward_cost_table({"student": student, "teacher": {"accuracy": 0.9}})
  lines = joint.strip().splitlines()
  assert len(lines) == 3  # the student's greedy row only: the teacher is not scored
  assert lines[2] == "| student | greedy | -0.25 | -0.50 | 0.1 / 0.5 / 0.9 | - / - / - |"
  assert report.reward_cost_table({"teacher": {"accuracy": 0.9}}) == ""
