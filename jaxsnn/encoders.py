"""Input encoders: the frame a network receives at each step, for ``simulate(..., encoder=...)`` or a frame per
:func:`jaxsnn.step`.

    enc = jaxsnn.encoders.poisson(jax.random.key(0), low=-2.0, high=2.0)
    trace = jaxsnn.simulate(snn, x, 32, encoder=enc)
    state = jaxsnn.init_state(snn, x)
    for t in range(32):                                         # the same frames, a step at a time
      state, out = jaxsnn.step(snn, state, enc(x, state.t))

* :func:`direct`: the input itself every step (the default: an analog current);
* :func:`poisson`: rate coding, a Bernoulli spike per value and step with the value as its probability;
* :func:`phase`: phase coding (weighted spikes), one bit of the value per step, most significant first.

Time-to-first-spike codes are not here: a converted network reads rates, so one spike per input cannot carry its
value (see the module ``jaxsnn._src.encoders`` and the analysis guide).
"""

from jaxsnn._src.encoders import Encoder, direct, phase, poisson

__all__ = ["Encoder", "direct", "phase", "poisson"]
