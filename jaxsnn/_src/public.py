"""The public modules of jaxsnn: one list, read by the API pages (docs/griffe_roles.py) and by the tests.

The order is the order in which a name's public path is chosen: a name exported by ``jaxsnn`` and by a submodule links
to ``jaxsnn``'s entry. ``tests/test_package.py`` checks that the list is every public module of the package (each
``jaxsnn/*.py`` without a leading underscore) and that each has an API page.
"""

from __future__ import annotations

import inspect
import types

MODULES = ("jaxsnn", "jaxsnn.recipes", "jaxsnn.lowlatency", "jaxsnn.analysis", "jaxsnn.results", "jaxsnn.neurons",
           "jaxsnn.surrogates", "jaxsnn.encoders", "jaxsnn.authors_protocol", "jaxsnn.files", "jaxsnn.xla", "jaxsnn.models",
           "jaxsnn.data", "jaxsnn.training", "jaxsnn.plotting")


def names(module: types.ModuleType) -> list[str]:
  """The public names of a module: ``__all__``, or the public functions and classes defined in the module when it has
  none."""
  if hasattr(module, "__all__"):
    return list(module.__all__)
  return [name for name, obj in vars(module).items()
          if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
          and obj.__module__ == module.__name__]
