"""The run's PNG: four panels, written where asked, at the expected size."""
import matplotlib.image

from cmdp.evaluation import plots


def test_training_figure_is_written(tmp_path):
  rows = [{"step": s, "train/task_reward": 0.1 * s, "train/kl_seq": 5.0 - s,
           "train/constraint_satisfaction": 0.5 + 0.1 * s} for s in range(1, 5)]
  rows.append({"step": 4, "eval/student/accuracy": 0.5})  # eval rows have no train/ keys
  results = {"initial_student": {"accuracy": 0.2, "satisfaction_greedy": 0.5},
             "student": {"accuracy": 0.4, "satisfaction_greedy": 0.9},
             "teacher": {"accuracy": 0.6}}
  path = plots.training_figure(rows, results, str(tmp_path / "run.png"), budget=3.0)
  image = matplotlib.image.imread(path)
  assert image.shape[:2] == (360, 1600)
  assert plots._series(rows, "train/kl_seq") == ([1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0])
