"""jaxsnn: convert trained Flax ANNs into spiking networks and simulate them fast.

Data flow::

    stats = jaxsnn.calibrate(apply_fn, variables, train_batches)      # per-neuron max activations
    snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats))  # ReLU -> SNM neurons
    trace = jaxsnn.simulate(snn, x, num_steps=256)                     # lax.scan over time
    acc = jaxsnn.accuracy_vs_time(trace, y)                            # accuracy after every t
"""

from jaxsnn import analysis, lowlatency, neurons
from jaxsnn._src.authors import authors_thresholds, evaluate_authors, simulate_authors
from jaxsnn._src.calibrate import Stats, calibrate, load_stats, save_stats
from jaxsnn._src.convert import SpikingNetwork, convert
from jaxsnn._src.information import information_loss
from jaxsnn._src.ir import ConversionError
from jaxsnn._src.lowlatency import (calibrate_snn, choose_readout_delay, descend_thresholds, ratio_histograms,
                                    relaxed_quantization_error, thresholds_for_steps, tune_snn)
from jaxsnn._src.neurons import IF, SNM, Neuron, SignedIF
from jaxsnn._src.norms import load_thresholds, save_thresholds, site_percentiles, thresholds
from jaxsnn._src.qcfs import qcfs
from jaxsnn._src.simulate import Trace, accuracy_vs_time, evaluate, simulate

__version__ = "0.2.0"

__all__ = [
    "ConversionError", "IF", "Neuron", "SNM", "SignedIF", "SpikingNetwork", "Stats", "Trace", "accuracy_vs_time",
    "calibrate", "convert", "evaluate", "neurons", "simulate", "thresholds",
    "analysis", "authors_thresholds", "evaluate_authors", "information_loss", "load_stats", "load_thresholds", "qcfs", "save_stats",
    "save_thresholds", "simulate_authors", "site_percentiles",
    "lowlatency", "calibrate_snn", "choose_readout_delay", "descend_thresholds", "ratio_histograms",
    "relaxed_quantization_error",
    "thresholds_for_steps", "tune_snn",
]
