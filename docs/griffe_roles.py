"""Griffe extension for the jaxsnn API pages: the docstrings' Sphinx roles become links.

jaxsnn's docstrings are Google style with Sphinx roles (``:func:`simulate```, ``:class:`jaxsnn.Trace```). Each role
becomes a mkdocstrings cross-reference to the object's **public** path (``jaxsnn.simulate``, not
``jaxsnn._src.simulate.simulate``), resolved the way Python resolves the name in the docstring's module; a role whose
target has no public path (a private helper) stays code, unlinked. A link to a public path that has no entry on the
API pages is a broken cross-reference, which fails the strict build. ``Example::`` (reStructuredText's literal-block
marker) becomes text, so the indented block after it renders as code, and an ``Example:`` section becomes
``Examples:``, which renders its ``>>>`` lines as a Python session. Names assigned by tuple unpacking at module level
(``A, B = 1, 2``) become attributes, which griffe's static analysis does not make them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys

import griffe

from jaxsnn._src import public

# The public modules whose names the API pages document, in the order a name's public path is chosen, and a module's
# public names: one list, shared with the tests (jaxsnn/_src/public.py).
PUBLIC_MODULES = public.MODULES
public_names = public.names

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([A-Za-z_][\w.]*)(?:\(\))?`")


def canonical(obj, fallback: str) -> str:
  if inspect.ismodule(obj):
    return obj.__name__
  module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
  if (inspect.isfunction(obj) or inspect.isclass(obj)) and module and qualname and "<" not in qualname:
    return f"{module}.{qualname}"
  return fallback


def public_paths() -> dict[str, str]:
  """``{canonical or public path: public path}`` for every public name."""
  paths: dict[str, str] = {}
  for module_name in PUBLIC_MODULES:
    module = importlib.import_module(module_name)
    paths.setdefault(module_name, module_name)
    for name in public_names(module):
      public = f"{module_name}.{name}"
      obj = getattr(module, name)
      paths.setdefault(canonical(obj, public), public)
      paths.setdefault(public, public)
  return paths


def lookup(dotted: str):
  """``(object, rest)``: the object at the longest resolvable prefix of ``dotted``, and the unresolved rest."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    rest = parts[i:]
    while rest:
      try:
        obj = getattr(obj, rest[0])
      except AttributeError:
        break
      rest = rest[1:]
    return obj, rest
  return None, parts


class Roles(griffe.Extension):
  """Rewrites every docstring's roles into cross-references (see the module docstring)."""

  def __init__(self) -> None:
    super().__init__()
    self._paths = None

  @property
  def paths(self) -> dict[str, str]:
    if self._paths is None:
      self._paths = public_paths()
    return self._paths

  def public(self, target: str, scopes: list[str]) -> str | None:
    if target in self.paths:
      return self.paths[target]
    for scope in scopes:
      obj, rest = lookup(f"{scope}.{target}")
      if obj is None or len(rest) == len(target.split(".")):
        continue  # not even the first part of the target is a name of this scope
      where = canonical(obj, "")
      if not where:
        continue
      path = ".".join([where, *rest])
      if path in self.paths:
        return self.paths[path]
      # A member of a public class: a method or property has its own entry; a field is documented in its class's
      # Attributes table, so the link goes to the class.
      head, _, member = path.rpartition(".")
      cls = lookup(self.paths[head])[0] if head in self.paths else None
      if inspect.isclass(cls):
        attr = inspect.getattr_static(cls, member, None)
        documented = (inspect.isfunction(attr) or isinstance(attr, (property, staticmethod, classmethod))) and \
            bool(getattr(attr, "__doc__", None))
        return f"{self.paths[head]}.{member}" if documented else self.paths[head]
    return None

  def rewrite(self, text: str, scopes: list[str]) -> str:
    def link(match: re.Match) -> str:
      target = match.group(1)
      path = self.public(target, scopes)
      return f"[`{target}`][{path}]" if path else f"`{target}`"

    text = ROLE.sub(link, text)
    text = re.sub(r"^(\s*)(Examples?)::\s*$", r"\1For example:", text, flags=re.M).replace("::\n", ":\n")
    # "Example:" is a Google-style admonition to griffe, whose ">>>" lines would render as nested quotes;
    # "Examples:" is the section that renders them as Python sessions.
    return re.sub(r"^(\s*)Example:\s*$", r"\1Examples:", text, flags=re.M)

  def on_module_members(self, *, node, mod: griffe.Module, **kwargs) -> None:
    # `A, B = 1, 2` at module level: griffe's static visitor makes no attributes of it; these do, with the string
    # statement after the assignment, if any, as the docstring of both names.
    if not isinstance(node, ast.Module):
      return
    body = node.body
    for i, stmt in enumerate(body):
      if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Tuple)
              and isinstance(stmt.value, ast.Tuple) and len(stmt.targets[0].elts) == len(stmt.value.elts)):
        continue
      after = body[i + 1] if i + 1 < len(body) else None
      doc = (after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
             and isinstance(after.value.value, str) else None)
      for target, value in zip(stmt.targets[0].elts, stmt.value.elts):
        if isinstance(target, ast.Name) and target.id not in mod.members:
          attr = griffe.Attribute(target.id, value=ast.unparse(value), lineno=stmt.lineno, endlineno=stmt.end_lineno)
          if doc:
            attr.docstring = griffe.Docstring(inspect.cleandoc(doc), lineno=after.lineno, endlineno=after.end_lineno,
                                              parent=attr)
          mod.set_member(target.id, attr)

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
    if obj.docstring is None or ":" not in obj.docstring.value:  # no role, no section
      return
    module = obj.module.path if not obj.is_module else obj.path
    scopes = [module]
    parent = obj if obj.is_class else obj.parent
    while parent is not None and parent.is_class:  # a method's docstring sees its class's names first
      scopes.insert(0, parent.path)
      parent = parent.parent
    if module not in sys.modules:
      try:
        importlib.import_module(module)
      except ImportError:
        return
    obj.docstring.value = self.rewrite(obj.docstring.value, scopes)
