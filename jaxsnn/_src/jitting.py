"""jaxsnn's own compiled computations, with the fast CPU kernels whoever calls them.

XLA:CPU's YNNPACK kernels for the contractions make the simulation much faster on CPU
(``benchmarks/xla_flags.py``). XLA reads its ``XLA_FLAGS`` once, when its CPU backend starts, so a flag set by a
script reaches only what that script computes, and a notebook user who never sets it gets the slow kernels. A compiler
option of the computation itself does not depend on who calls: :func:`jit` is ``jax.jit`` that, on CPU, compiles with
``{"xla_cpu_experimental_ynn_fusion_type": 1}``, which selects the same kernels as
``--xla_cpu_experimental_ynn_fusion_type=dot`` (the same bits: tested in ``tests/test_xla.py``). Importing jaxsnn
still never touches the environment.

Opt out with ``JAXSNN_FAST_CPU=0`` (read once, at the first compiled call). A user's own ``XLA_FLAGS`` that name the
option win: jaxsnn then adds nothing.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax

FLAG = "xla_cpu_experimental_ynn_fusion_type"
FAST_CPU_OPTIONS = {FLAG: 1}
"""The compiler options of :func:`jit` on CPU (1: YNNPACK for the dot fusions, the flag's ``dot``)."""
OPT_OUT = "JAXSNN_FAST_CPU"
"""Set to ``0`` to keep XLA's own kernels everywhere jaxsnn would use the fast ones."""


def opted_out(environ=os.environ) -> bool:
  return environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off")


@functools.cache
def options() -> dict | None:
  """The compiler options jaxsnn's computations get in this process: :data:`FAST_CPU_OPTIONS` on the CPU backend,
  unless opted out or the user's ``XLA_FLAGS`` already name the option; else None."""
  if opted_out() or FLAG in os.environ.get("XLA_FLAGS", "") or jax.default_backend() != "cpu":
    return None
  return dict(FAST_CPU_OPTIONS)


class _Jit:
  """A jitted function compiled with :func:`options` (one ``jax.jit`` per setting, made when first called)."""

  def __init__(self, fun: Callable, kwargs: dict):
    self._fun, self._kwargs = fun, kwargs
    self._plain = jax.jit(fun, **kwargs)
    self._fast = None
    functools.update_wrapper(self, fun)

  def _pick(self, args=(), kwargs=None):
    opts = options()
    # Compiler options belong to a top-level computation: called inside another trace, this one is inlined into it.
    if opts is None or any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs))):
      return self._plain
    if self._fast is None:
      self._fast = jax.jit(self._fun, compiler_options=opts, **self._kwargs)
    return self._fast

  def __call__(self, *args, **kwargs) -> Any:
    fun = self._pick(args, kwargs)
    if fun is self._plain:
      return fun(*args, **kwargs)
    try:
      return fun(*args, **kwargs)
    except ValueError as e:  # inside a trace whose arguments here are all constants
      if "can only be passed to top-level" not in str(e):
        raise
      return self._plain(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._pick(args, kwargs).lower(*args, **kwargs)

  def eval_shape(self, *args, **kwargs):
    return self._plain.eval_shape(*args, **kwargs)

  def _cache_size(self) -> int:
    """Compiled programs so far (for the no-recompilation tests)."""
    return self._plain._cache_size() + (0 if self._fast is None else self._fast._cache_size())


def jit(fun: Callable | None = None, **kwargs):
  """``jax.jit(fun, **kwargs)``, compiled with :func:`options` (the fast CPU kernels on CPU). Usable as
  ``@jit`` and ``@functools.partial(jit, static_argnums=...)``."""
  if fun is None:
    return functools.partial(jit, **kwargs)
  return _Jit(fun, kwargs)
