"""jaxsnn: convert trained JAX/Flax ANNs into spiking networks and simulate them fast and exactly.

Data flow::

    snn, report = jaxsnn.recipes.low_latency(apply_fn, variables, train_batches, num_steps=8)  # one call
    ev = jaxsnn.evaluate(snn, test_batches, num_steps=8)                # accuracy after every t, streamed

or stage by stage::

    stats = jaxsnn.calibrate(apply_fn, variables, train_batches)      # per-neuron max activations
    snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(stats))  # ReLU -> SNM neurons
    trace = jaxsnn.simulate(snn, x, num_steps=256)                     # lax.scan of jaxsnn.step over time
    acc = jaxsnn.accuracy_vs_time(trace, y)                            # accuracy after every t

Every function that reads data takes batches in one protocol (arrays, ``(x, labels[, mask])`` tuples,
``{"image", "label", "mask"}`` dicts, iterables of these).
"""

from jaxsnn import analysis, authors_protocol, encoders, files, lowlatency, neurons, recipes, results, surrogates
from jaxsnn._src.calibrate import Stats, calibrate, load_stats, save_stats
from jaxsnn._src.convert import SpikingNetwork, convert
from jaxsnn._src.evaluate import Evaluation, Recorded, accuracy_vs_time, agreement, evaluate
from jaxsnn._src.information import information_loss
from jaxsnn._src.loop import NonFiniteLossError
from jaxsnn._src.ir import ConversionError
from jaxsnn._src.neurons import IF, SNM, Neuron, SignedIF
from jaxsnn._src.norms import load_thresholds, save_thresholds, site_percentiles, thresholds
from jaxsnn._src.qcfs import qcfs
from jaxsnn._src.quantize import QuantizedApply, QuantizedVariables, quantize_for_conversion
from jaxsnn._src.readout import choose_readout_delay
from jaxsnn._src.reports import RecipeReport, Report
from jaxsnn._src.rules import Rule, register as register_rule
from jaxsnn._src.saving import load, save
from jaxsnn._src.simulate import Recording, State, Tallies, Trace, init_state, readout, simulate, step
from jaxsnn._src.snn_calibration import calibrate_snn
from jaxsnn._src.thresholds import (descend_thresholds, ratio_histograms, relaxed_quantization_error,
                                    thresholds_for_steps)
from jaxsnn._src.tuning import finetune, tune_snn

__version__ = "0.3.0"

__all__ = [
    # neurons and surrogate gradients
    "IF", "Neuron", "SNM", "SignedIF", "neurons", "surrogates",
    # conversion
    "ConversionError", "Rule", "SpikingNetwork", "convert", "register_rule",
    # saving and loading (one file format: jaxsnn.files)
    "files", "load", "save",
    # calibration and thresholds
    "Stats", "calibrate", "load_stats", "load_thresholds", "save_stats", "save_thresholds", "site_percentiles",
    "thresholds",
    # simulation
    "Recording", "State", "Tallies", "Trace", "encoders", "init_state", "readout", "simulate", "step",
    # evaluation
    "Evaluation", "Recorded", "accuracy_vs_time", "agreement", "evaluate",
    # low latency
    "NonFiniteLossError", "RecipeReport", "Report", "calibrate_snn", "choose_readout_delay", "descend_thresholds",
    "finetune", "lowlatency",
    "ratio_histograms", "recipes", "relaxed_quantization_error", "thresholds_for_steps", "tune_snn",
    # analysis, QCFS, the authors' protocol
    "analysis", "authors_protocol", "information_loss", "qcfs", "results",
    # conversion-aware fine-tuning
    "QuantizedApply", "QuantizedVariables", "quantize_for_conversion",
]
