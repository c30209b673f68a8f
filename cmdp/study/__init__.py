"""Evidence studies: every objective over seeds, with confidence intervals.

    python -m cmdp.study --config configs/study_arith.py --workdir DIR

* `pretrain`: the cached supervised stage (teacher and student from scratch);
* `runner`: method list, budget calibration, resumable (method, seed) runs;
* `evaluate`: `cmdp.evaluation.evaluate_model` (greedy and sampled accuracy, per-sample
  satisfaction at the study's d, KL quantiles) plus the accuracy per problem sub-type;
* `stats`: per-method summaries and paired differences over seeds (the intervals themselves
  are `cmdp.evaluation.stats`);
* `report`, `plot`: the markdown / JSON / PNG;
* `main`: the whole study.
"""
