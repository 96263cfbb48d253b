"""The two test tiers: every entry of the slow tier's list (conftest.SLOW) names a test, so that a renamed test cannot
silently leave the slow tier for the fast one (or the list fill with dead names)."""

import ast
import subprocess
import sys

import pytest

from conftest import ROOT, SLOW, slow_entry_matches


def test_every_slow_entry_names_a_test_function_of_its_file():
  missing = []
  for entry in SLOW:
    file, _, test = entry.partition("::")
    path = ROOT / "tests" / file
    if not path.is_file():
      missing.append(entry)
      continue
    functions = {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
    if test and test.split("[", 1)[0] not in functions:
      missing.append(entry)
  assert missing == []


def test_the_entry_matcher():
  assert slow_entry_matches("test_a.py", "tests/test_a.py::test_x[1]")
  assert slow_entry_matches("test_a.py::test_x", "tests/test_a.py::test_x[1]")
  assert slow_entry_matches("test_a.py::test_x[1]", "tests/test_a.py::test_x[1]")
  assert not slow_entry_matches("test_a.py::test_x[1]", "tests/test_a.py::test_x[2]")
  assert not slow_entry_matches("test_a.py::test_x", "tests/test_a.py::test_xy")
  assert not slow_entry_matches("test_a.py", "tests/test_ab.py::test_x")


@pytest.mark.slow
def test_every_slow_entry_names_a_collected_test():
  """Parametrizations included (their ids exist only once collected): the whole suite collected in a subprocess."""
  done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                         str(ROOT / "tests")], capture_output=True, text=True, timeout=600, cwd=ROOT)
  ids = [line for line in done.stdout.splitlines() if "::" in line]
  assert len(ids) > 500, done.stdout[-3000:] + done.stderr[-3000:]
  assert [entry for entry in SLOW if not any(slow_entry_matches(entry, i) for i in ids)] == []
