"""Spiking neuron models: each a :class:`Neuron` ``(init, step)`` pair of pure functions."""

from jaxsnn._src.neurons import IF, SNM, IFState, Neuron, SignedIF, SNMState

__all__ = ["IF", "IFState", "Neuron", "SNM", "SNMState", "SignedIF"]
