"""Surrogate gradients for the firing decision of every neuron: pass one to :func:`jaxsnn.simulate`,
:func:`jaxsnn.step` or :func:`jaxsnn.tune_snn` and ``jax.grad`` flows through the spikes (the forward spikes stay
exact).

    trace = jaxsnn.simulate(snn, x, 8, surrogate=jaxsnn.surrogates.sigmoid(4.0))
"""

from jaxsnn._src.surrogates import Surrogate, fast_sigmoid, sigmoid, straight_through, triangle

__all__ = ["Surrogate", "fast_sigmoid", "sigmoid", "straight_through", "triangle"]
