"""XLA options for the simulator: the CPU kernels jaxsnn's own entry points use by default, and how to get them in
your own process.

XLA:CPU's YNNPACK kernels for the contractions (``--xla_cpu_experimental_ynn_fusion_type=dot``) make the simulation
1.1-1.4x faster on the reference CIFAR-10 networks (``benchmarks/xla_flags.py``, ``benchmarks/RESULTS.md``). They round
differently from XLA's own kernels, so spike trains are not bit-equal to a run without them; the answers are the same
to the tolerance stated in benchmarks/RESULTS.md, and both simulation schedules stay bit-identical under either.

jaxsnn's own computations get these kernels whoever calls them: on CPU, every function jaxsnn compiles carries the
equivalent compiler option (``jaxsnn._src.jitting``; same kernels, same bits), unless ``JAXSNN_FAST_CPU=0`` or your
``XLA_FLAGS`` name the option. The flag below is for the rest of a process's JAX code: XLA reads its flags once, when
JAX starts its CPU backend, so set them before the first JAX computation. Importing jaxsnn never changes your
environment; the scripts of ``experiments/`` and ``benchmarks/`` (and so ``bash scripts/run.sh``) call
:func:`use_fast_cpu_kernels` first thing, unless ``JAXSNN_FAST_CPU=0``. In your own script::

    import jaxsnn.xla
    jaxsnn.xla.use_fast_cpu_kernels()     # before any JAX computation
    import jax, jaxsnn                    # ... as usual

or from the shell: ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot python your_script.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

__all__ = ["FAST_CPU_FLAGS", "OPT_OUT", "fast_cpu_xla_flags", "use_fast_cpu_kernels"]

FAST_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
"""The XLA:CPU flags of :func:`use_fast_cpu_kernels`."""

OPT_OUT = "JAXSNN_FAST_CPU"
"""Set to ``0`` to keep XLA's own kernels where jaxsnn's entry points would use the fast ones."""


def fast_cpu_xla_flags(environ: Mapping[str, str] = os.environ) -> str | None:
  """The ``XLA_FLAGS`` value with :data:`FAST_CPU_FLAGS` added to what ``environ`` has, or None when they are not
  wanted (``JAXSNN_FAST_CPU=0``) or already there (or the user set the same flag to another value).

  Args:
    environ: the environment to read (default: this process's).

  Returns:
    The new ``XLA_FLAGS``, or None for no change.
  """
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return None
  current = environ.get("XLA_FLAGS", "")
  missing = [f for f in FAST_CPU_FLAGS if f.split("=", 1)[0] not in current]
  if not missing:
    return None
  return " ".join([current, *missing]).strip()


def use_fast_cpu_kernels(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Adds :data:`FAST_CPU_FLAGS` to ``XLA_FLAGS`` (see the module docstring), unless ``JAXSNN_FAST_CPU=0``.

  Call it before the first JAX computation of the process: XLA reads its flags when the backend starts, and a later
  change is ignored (JAX offers no public way to tell whether it started, so nothing can warn you).

  Args:
    environ: the environment to change (default: this process's).

  Returns:
    Whether ``XLA_FLAGS`` changed.
  """
  flags = fast_cpu_xla_flags(environ)
  if flags is None:
    return False
  environ["XLA_FLAGS"] = flags
  return True
