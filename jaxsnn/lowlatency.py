"""Low-latency conversion tools, one by one: thresholds for a target T, layer-wise SNN calibration, end-to-end
tuning and a readout delay (:mod:`jaxsnn.recipes` composes them in one call).

    stats = jaxsnn.calibrate(apply_fn, variables, train_batches)
    hist = jaxsnn.ratio_histograms(apply_fn, variables, train_batches, stats)
    th = jaxsnn.thresholds_for_steps(hist, num_steps=16, initial_potential=0.5, granularity="channel")
    snn = jaxsnn.convert(apply_fn, variables, x, th, initial_potential=0.5)
    snn, report = jaxsnn.calibrate_snn(snn, few_train_batches, num_steps=16, granularity="channel")
    snn, report = jaxsnn.choose_readout_delay(snn, other_train_batches, num_steps=16)
"""

from jaxsnn._src.readout import choose_readout_delay
from jaxsnn._src.snn_calibration import calibrate_snn
from jaxsnn._src.thresholds import (DEFAULT_SCALES, RATIO_BINS, RatioHistograms, descend_thresholds, expected_error,
                                    ratio_histograms, relaxed_quantization_error, thresholds_for_steps)
from jaxsnn._src.tuning import tune_snn

__all__ = ["DEFAULT_SCALES", "RATIO_BINS", "RatioHistograms", "calibrate_snn", "choose_readout_delay",
           "descend_thresholds", "expected_error", "ratio_histograms", "relaxed_quantization_error",
           "thresholds_for_steps", "tune_snn"]
