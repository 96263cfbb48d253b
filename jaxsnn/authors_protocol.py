"""The authors' threshold protocol — for comparison only: it LEAKS THE TEST SET into the thresholds.

The authors' code keeps one max per neuron and per batch slot over the test loader and then the train loader, so a
test image's thresholds are at least its own activations. These functions reproduce it to measure how much the leak
flatters low-T accuracy; no jaxsnn result is ever reported with them except as this named comparison.

    slots = jaxsnn.authors_protocol.thresholds(apply_fn, variables, test_batches + train_batches)
    ev = jaxsnn.authors_protocol.evaluate(snn, test_batches, slots, num_steps=32)
"""

from jaxsnn._src.authors import evaluate, simulate, thresholds

__all__ = ["evaluate", "simulate", "thresholds"]
