"""Old spellings of renamed arguments, accepted for a while with a ``DeprecationWarning`` that names the new one.

Only for callers in this repository that another change owns and has not updated yet: ``experiments/common.py``
(``recipes.paper(norm=...)``, ``recipes.qcfs``) and ``benchmarks/peers.py`` (a positional ``block_size`` of
``jaxsnn.simulate``). The public signature (``inspect.signature``, the API pages) shows the new names only. Remove
each entry with its last caller.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable


def _warn(caller: str, old: str, new: str) -> None:
  warnings.warn(f"{caller}: {old} is now {new}; the old spelling will go.", DeprecationWarning, stacklevel=3)


def keywords(caller: str, **renamed: str) -> Callable:
  """A decorator: the keyword ``old`` is passed on as ``renamed[old]`` (with a warning); both at once is an error."""
  def wrap(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
      for old, new in renamed.items():
        if old in kwargs:
          if new in kwargs:
            raise TypeError(f"{caller}: got both {old}= and {new}=; pass {new}= only.")
          _warn(caller, f"{old}=", f"{new}=")
          kwargs[new] = kwargs.pop(old)
      return fn(*args, **kwargs)
    return call
  return wrap


def keyword_only(caller: str, positional: int, *names: str) -> Callable:
  """A decorator: arguments given positionally beyond the first ``positional`` are passed on as the keyword-only
  ``names``, in order (with a warning)."""
  def wrap(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
      extra = args[positional:]
      if len(extra) > len(names):
        raise TypeError(f"{caller}: takes {positional} positional arguments; got {len(args)}.")
      for name, value in zip(names, extra):
        if name in kwargs:
          raise TypeError(f"{caller}: got {name} positionally and as {name}=; pass {name}= only.")
        _warn(caller, f"a positional {name}", f"keyword-only ({name}=...)")
        kwargs[name] = value
      return fn(*args[:positional], **kwargs)
    return call
  return wrap


def function(caller: str, new_name: str, fn: Callable) -> Callable:
  """``fn`` under its old name ``caller``, warning that it is now ``new_name``."""
  @functools.wraps(fn)
  def call(*args, **kwargs):
    _warn(caller, caller, new_name)
    return fn(*args, **kwargs)
  call.__name__ = caller.rsplit(".", 1)[-1]
  call.__qualname__ = call.__name__
  call.__doc__ = f"Deprecated: the old name of :func:`{new_name}` (same arguments)."
  return call
