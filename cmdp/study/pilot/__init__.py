"""The grpo-only pilot of a study's protocol (version 2): it sets the stress before the
comparison runs.

    python -m cmdp.study --config configs/study_arith.py --workdir DIR --pilot

grpo does not read `d`, so one run per (setting, seed) measures its satisfaction at every
candidate budget. The pilot reuses the study's shared stages (`cmdp.study.compare.prepare`:
the models, the calibration at the pilot's candidate quantiles, the initial evaluation),
trains grpo at each setting (learning rate x steps) of the config's `pilot` section on the
pilot's own seeds, resumably, and reports the choice its declared rule makes.

* `analysis`: the per-setting changes in satisfaction and the choice rule, as plain data;
* `report`: the analysis rendered (`<name>_pilot.md`, `.json`);
* `run`: the stages and runs (`run_pilot`).
"""
