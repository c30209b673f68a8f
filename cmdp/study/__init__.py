"""Evidence studies: every objective over seeds, with confidence intervals.

    python -m cmdp.study --config configs/study_arith.py --workdir DIR

* `protocol`: the method families (one table), their grid of methods and the decision rules;
* `pretrain`: the cached supervised stage (teacher and student from scratch);
* `runner`: method list, resumable (method, seed) run directories;
* `evaluate`: `cmdp.evaluation.evaluate_model` (greedy and sampled accuracy, per-sample
  satisfaction at the study's d, KL quantiles) plus the accuracy per problem sub-type;
* `stats`: per-method summaries and paired differences over seeds (the intervals themselves
  are `cmdp.evaluation.stats`);
* `analysis`: the study's findings per budget as plain data (per-seed figures, decisions,
  summaries, paired tables), no text;
* `report`, `plot`: the analysis rendered: the markdown / JSON / PNG;
* `quote`: the analysis in a few lines for the README (`cmdp.quote`);
* `compare`: the whole study (shared stages, runs, resuming, then analysis and report).
* `pilot`: a study's grpo-only pilot (`--pilot`): the same shared stages, grpo at each
  declared setting on seeds of its own, and the choice its declared rule makes
  (docs/studies.md).
"""
