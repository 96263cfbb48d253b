"""Recipes: a trained ANN to an SNN in one call, with a report of what every stage chose.

    snn, report = jaxsnn.recipes.paper(apply_fn, variables, train_batches)                    # the paper's method
    snn, report = jaxsnn.recipes.low_latency(apply_fn, variables, train_batches, num_steps=8)  # accurate at T = 8
    snn, report = jaxsnn.recipes.quantized(apply_fn, qcfs_variables, train_batches, num_steps=4)  # a QCFS net
    snn, report = jaxsnn.recipes.few_steps(apply_fn, variables, train_batches, 4, validation=val)  # QCFS fine-tuning first
    print(report)

A stage is ``(snn, batches) -> (snn, report)`` (e.g. ``functools.partial(jaxsnn.calibrate_snn, num_steps=8)``);
:func:`chain` composes stages into a stage (every recipe is a chain after its conversion); :func:`on_first` gives a
stage its share of the data, :func:`checked` measures the network after it; :func:`low_latency_stages` are the
recipes' own, to splice yours into.
"""

from jaxsnn._src.recipes import (BATCH_SIZE, CALIBRATION_GRANULARITY, DELAY_EXAMPLES, SNN_CALIBRATION_EXAMPLES,
                                 TUNE_EXAMPLES, TUNE_ITERATIONS, Stage, agreement_check, chain, checked, few_steps,
                                 low_latency, low_latency_stages, on_first, paper, quantized, validation_check)
from jaxsnn._src.reports import RecipeReport, Report

__all__ = ["BATCH_SIZE", "CALIBRATION_GRANULARITY", "DELAY_EXAMPLES", "RecipeReport", "Report",
           "SNN_CALIBRATION_EXAMPLES", "Stage", "TUNE_EXAMPLES", "TUNE_ITERATIONS", "agreement_check", "chain",
           "checked", "few_steps", "low_latency", "low_latency_stages", "on_first", "paper", "quantized",
           "validation_check"]
