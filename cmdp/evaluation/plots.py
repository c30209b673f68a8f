"""A run's picture: reward, KL and constraint satisfaction over the steps, and before/after.

`training_figure(rows, results, budget, path)` writes one PNG (matplotlib, Agg backend):
three panels of training curves from the metric rows (`train/task_reward`, `train/kl_seq`
with the budget drawn when the cost is the KL, `train/constraint_satisfaction`), and a
fourth with each evaluated model's accuracy and satisfaction side by side.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

CURVES = (("train/task_reward", "task reward"),
          ("train/kl_seq", "KL(student || teacher) per sequence, nats"),
          ("train/constraint_satisfaction", "constraint satisfaction"))


def _series(rows: list[dict], key: str):
  pts = [(r["step"], r[key]) for r in rows if key in r]
  return [p[0] for p in pts], [p[1] for p in pts]


def training_figure(rows: list[dict], results: dict, path: str, *, budget: float | None = None,
                    kl_is_cost: bool = True) -> str:
  """Writes the PNG at `path` and returns it.

  Args:
    rows: metric rows (`cmdp.training.logging.read_metrics`).
    results: `{model: eval metrics}` (eval.json's "models"), e.g. initial_student, student,
      teacher; `accuracy` (greedy) and `satisfaction_greedy` are plotted where present.
    path: the PNG to write.
    budget: the constraint's d, drawn on the KL panel when `kl_is_cost`.
    kl_is_cost: the run's constraint is the sequence KL (cost reverse_kl, constraint sum).
  """
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
  for ax, (key, label) in zip(axes, CURVES):
    x, y = _series(rows, key)
    ax.plot(x, y, marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_title(label, fontsize=9)
    if key == "train/kl_seq" and budget is not None and kl_is_cost:
      ax.axhline(budget, color="tab:red", linestyle="--", label=f"budget d = {budget:.3g}")
      ax.legend(fontsize=8)
    if key != "train/kl_seq":
      ax.set_ylim(-0.02, 1.02)
  ax = axes[3]
  names = [n for n in ("teacher", "initial_student", "student") if n in results]
  width = 0.38
  for i, (key, label) in enumerate((("accuracy", "accuracy (greedy)"),
                                    ("satisfaction_greedy", "satisfaction (greedy)"))):
    vals = [results[n].get(key, float("nan")) for n in names]
    ax.bar([j + (i - 0.5) * width for j in range(len(names))], vals, width, label=label)
  ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_title("before / after", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
