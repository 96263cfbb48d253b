"""Spiking neuron models: each a :class:`Neuron` ``(init, step)`` pair of pure functions, and the helpers a neuron of
your own builds its step from (so that surrogate gradients reach its firing decisions):

    def step(threshold, state, current, fire=exact_fire):
      v = state.v + current
      pos = gate(fire(v, threshold), threshold > 0)           # the decision, through the hook
      s = amplitude(threshold, pos, jnp.zeros_like(pos))      # +θ / 0 spikes, exact or with a surrogate
      return IFState(v=v - s), s
"""

from jaxsnn._src.neurons import IF, SNM, IFState, Neuron, SignedIF, SNMState, amplitude, fired, gate
from jaxsnn._src.surrogates import exact_fire

__all__ = ["IF", "IFState", "Neuron", "SNM", "SNMState", "SignedIF", "amplitude", "exact_fire", "fired", "gate"]
