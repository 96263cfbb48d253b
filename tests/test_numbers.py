"""The prose and tables of README.md, experiments/RESULTS.md, benchmarks/RESULTS.md and the docs pages say what
their committed result files say: every number marked as coming from a result file is checked against that file
(``experiments/results/**``, ``benchmarks/results/**``, ``experiments/figures/*`` and the training runs'
``experiments/checkpoints/*.metrics.jsonl``), so the prose cannot drift from them.

The marking convention: an HTML comment (shown neither on GitHub nor on the docs site), at the start of the line right
after the paragraph, list or table whose numbers it checks (no blank line between them)::

    <!-- check
    vgg = R("experiments/results/lowlatency/cifar10_vgg16_w025.json")   # bind a result file (for the rest of the page)
    88.19 = vgg.chosen_acc(32)                                          # a number of the text above = an expression
    −0.16 = vgg.ann - vgg.chosen_acc(32)                                # ... rounded to the digits the text shows
    assert vgg.chosen(32) == vgg.best(32)                               # a claim without a number
    table: [vgg.acc(row, t) for t in (4, 8)]                            # every row of the table above, number by number
    text: cost_table(vgg, (4, 8, 16, 32))                               # the table above is exactly this text
    in text: seq(curve, 1)                                              # this text occurs in the block above
    -->

The block a comment checks is the run of non-blank lines right above it, back to a blank line, a heading or the end
of another check comment (inside a code block, ``#`` lines are not headings).

* ``LITERAL = EXPRESSION``: LITERAL must occur as a number in that block, and EXPRESSION, rounded to LITERAL's
  decimals, must equal it (``−``, ``+`` and ``,`` as written; a tie at the last digit passes either way).
* ``table: EXPRESSION``: for each body row of the table above, ``row`` is its first cell and ``cells`` all its cells
  (without ``**``); EXPRESSION gives the numbers of the row's other cells, in order (``None`` skips one; an
  expression of ``None`` skips the row).
* ``assert EXPRESSION``, ``text: EXPRESSION`` (the block's table, or the block, is exactly that string) and
  ``in text: EXPRESSION`` (that string occurs in the block, whitespace-insensitive).
* ``NAME = EXPRESSION`` binds NAME for the rest of the page (``row``, ``cells`` and ``text`` are reserved);
  ``R(path)`` reads a result file (see :class:`Result`). A ``  #`` starts a comment.

Everything is plain Python evaluated over the committed files: no simulation, no arithmetic that depends on the CPU,
about a second for every page.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import pathlib
import re
import statistics

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
from jaxsnn import results  # the validation choice and the cost tables the reports print

PAGES = ("README.md", "experiments/RESULTS.md", "benchmarks/RESULTS.md",
         *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs/src").rglob("*.md")))
# The least number of checked numbers per page: deleting the marks would pass every check of what is left.
FLOOR = {"README.md": 100, "experiments/RESULTS.md": 2300, "benchmarks/RESULTS.md": 350}

RESERVED = ("row", "cells", "text")
COMMENT = re.compile(r"^[ \t]*<!-- check\n(.*?)^[ \t]*-->[ \t]*$", re.S | re.M)
LITERAL = re.compile(r"^[+−-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")
NUMBER = re.compile(r"(?<![\w.,+−/-])[+−-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w]|[.,]\d)")


@functools.lru_cache(maxsize=None)
def load(path: str):
  text = (ROOT / path).read_text()
  if path.endswith(".jsonl"):  # a training run's metrics: one line per epoch, then the final record
    return [json.loads(line) for line in text.splitlines() if line.strip()]
  return json.loads(text)


@functools.lru_cache(maxsize=None)
def R(path: str) -> "Result":  # noqa: N802 (short: it is written in every check comment)
  return Result(path)


class Result:
  """A committed result file. ``r["key"]`` is the raw JSON; for the conversion results of ``experiments/main.py``
  (``methods``: per method its ``accuracy`` after every t, ``at[T]`` its rates and energy, ``validation``):

  * ``r.ann``: the ANN's accuracy, %; ``r.acc(m, T)`` the test accuracy of method m after T steps, %;
    ``r.val(m, T)`` on the validation images; ``r.lost(m, T)`` = ``r.ann - r.acc(m, T)``;
  * ``r.rate(m, T)``, ``r.E(m, T)``, ``r.Eavg(m, T)``: average firing rate, Eq. 15 energy ratio (fold, average pooling);
  * ``r.chosen(T)``: the method chosen at T on the validation images (``jaxsnn.results.chosen``, the rule of the reports,
    checked against the file's own ``selection``); ``r.best(T)``: the best on the test set (reference only);
  * ``r.seconds(m)``, ``r.prepare(m)``: simulation and preparation time; ``r.minutes()``: all methods'
    together (fine-tuning included).

  A method name without its target, ``r.acc("SNM + NeuronNorm + θ/2 + T-aware θ", 8)``, means the one tuned for T.
  """

  def __init__(self, path: str):
    self.path = path
    self.j = load(path)

  def __getitem__(self, key):
    return self.j[key]

  @property
  def epochs(self) -> list:
    """A training run's per-epoch records (``experiments/checkpoints/*.metrics.jsonl``)."""
    return [line for line in self.j if "epoch" in line]

  @property
  def final(self) -> dict:
    """A training run's final record: best epoch, test accuracy, training seconds."""
    return next(line for line in self.j if line.get("final"))

  def curve(self, key: str = "val_accuracy") -> list:
    """A training run's per-epoch values of key, accuracies in %."""
    return [100 * e[key] if "accuracy" in key else e[key] for e in self.epochs]

  @property
  def ann(self) -> float:
    return 100 * self.j["ann_accuracy"]

  def m(self, name: str, t: int | None = None) -> dict:
    methods = self.j["methods"]
    if name in methods:
      return methods[name]
    if t is not None and f"{name} (T={t})" in methods:
      return methods[f"{name} (T={t})"]
    raise KeyError(f"{self.path}: no method {name!r} (T={t})")

  def acc(self, name: str, t: int) -> float:
    accuracy = self.m(name, t)["accuracy"]
    assert t <= len(accuracy), f"{self.path}: {name} was simulated to T = {len(accuracy)}, not {t}"
    return 100 * accuracy[t - 1]

  def val(self, name: str, t: int) -> float:
    return 100 * self.m(name, t)["validation"]["accuracy"][t - 1]

  def lost(self, name: str, t: int) -> float:
    return self.ann - self.acc(name, t)

  def at(self, name: str, t: int) -> dict:
    return self.m(name, t)["at"][str(t)]

  def rate(self, name: str, t: int) -> float:
    return self.at(name, t)["average_firing_rate"]

  def E(self, name: str, t: int) -> float:  # noqa: N802 (the paper's symbol)
    return self.at(name, t)["energy_ratio"]

  def Eavg(self, name: str, t: int) -> float:  # noqa: N802
    return self.at(name, t)["energy_ratio_average_pooling"]

  def seconds(self, name: str) -> float:
    return self.m(name)["seconds"]

  def prepare(self, name: str) -> float:
    return self.m(name)["prepare_seconds"]

  def minutes(self) -> float:
    return sum(r.get("seconds", 0) + r.get("prepare_seconds", 0) + r.get("finetune", {}).get("seconds", 0)
               for r in self.j["methods"].values()) / 60

  def chosen(self, t: int) -> str:
    pick = results.chosen(self.j, (t,))[t]
    assert pick is not None, f"{self.path}: no validation choice at T = {t}"
    recorded = self.j.get("selection", {}).get("chosen", {}).get(str(t))
    assert recorded in (None, pick[0]), f"{self.path}: the file's selection at T = {t} is {recorded}, not {pick[0]}"
    return pick[0]

  def chosen_acc(self, t: int) -> float:
    return self.acc(self.chosen(t), t)

  def chosen_lost(self, t: int) -> float:
    return self.lost(self.chosen(t), t)

  def chosen_rate(self, t: int) -> float:
    return self.rate(self.chosen(t), t)

  def chosen_E(self, t: int) -> float:  # noqa: N802
    return self.E(self.chosen(t), t)

  def best(self, t: int) -> str:
    """The method with the best test accuracy at T (what no rule may choose by: a reference only)."""
    candidates = [(n, r) for n, r in self.j["methods"].items()
                  if t <= len(r["accuracy"]) and r.get("method", {}).get("target") in (None, t)
                  and not r.get("method", {}).get("authors")]
    return max(candidates, key=lambda nr: nr[1]["accuracy"][t - 1])[0]


def cost_table(result: Result, steps) -> str:
  return results.cost_table(result.j, steps)


def seq(values, decimals: int, sep: str = ", ") -> str:
  """values as the text writes a list of them: ``seq([88.21, 89.43], 1)`` is ``"88.2, 89.4"``."""
  return sep.join(f"{v:,.{decimals}f}" for v in values)


def first_at_least(curve, level) -> int:
  """The first T (1-based) at which a curve reaches level (same units), else 0."""
  return next((t for t, a in enumerate(curve, 1) if a >= level), 0)


BUILTINS = {"abs": abs, "all": all, "any": any, "len": len, "max": max, "min": min, "range": range, "round": round,
            "sum": sum, "sorted": sorted, "zip": zip, "enumerate": enumerate, "list": list, "dict": dict,
            "isinstance": isinstance, "str": str, "int": int, "float": float, "next": next, "set": set,
            "tuple": tuple}
NAMESPACE = {"R": R, "cost_table": cost_table, "datetime": datetime.datetime, "table_rows": lambda text: table_rows(text), "median": statistics.median, "math": math,
             "first_at_least": first_at_least, "seq": seq, "MiB": 2 ** 20}


def checked_text(lines: list[str], end: int) -> str:
  """The block a comment starting at line ``end`` checks: the lines right above it back to a blank line, a heading
  or the end of another comment (a whole paragraph, list, table or code block)."""
  fenced, inside = [], False
  for line in lines[:end]:
    inside ^= line.lstrip().startswith("```")
    fenced.append(inside or line.lstrip().startswith("```"))
  start = end
  while start > 0:
    line = lines[start - 1]
    if not line.strip() or line.rstrip().endswith("-->") or (line.startswith("#") and not fenced[start - 1]):
      break
    start -= 1
  return "\n".join(lines[start:end])


def number(token: str) -> float:
  return float(token.replace(",", "").replace("−", "-"))


def matches(value, literal: str) -> bool:
  """value rounded to literal's decimals is literal (a tie at the last digit either way)."""
  if value is None or isinstance(value, (str, bool)):
    return False
  decimals = len(literal.split(".")[1]) if "." in literal else 0
  return abs(float(value) - number(literal)) <= 0.5 * 10 ** -decimals + 1e-9 * max(1.0, abs(number(literal)))


def occurs(literal: str, text: str) -> bool:
  digits = literal.lstrip("+−-")
  sign = literal[:len(literal) - len(digits)]
  signs = re.escape(sign) if sign else "[+−-]?"
  return re.search(rf"(?<![\w.,+−/-]){signs}{re.escape(digits)}(?![\w]|[.,]\d)", text) is not None


def table_rows(text: str) -> list[list[str]]:
  rows = [line for line in text.splitlines() if line.lstrip().startswith("|")]
  return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows[2:]]


def run_checks(page: str, text: str | None = None) -> tuple[int, list[str]]:
  """(how many numbers were checked, the failures) for one page."""
  text = (ROOT / page).read_text() if text is None else text
  lines = text.split("\n")
  ns = dict(NAMESPACE)
  failures, count = [], 0
  for match in COMMENT.finditer(text):
    line_no = text.count("\n", 0, match.start())
    block = checked_text(lines, line_no)
    where = f"{page}:{line_no + 1}"

    def evaluate(expr, extra=None):
      # One dict as globals, so that lambdas and comprehensions see the page's bindings.
      scope = {"__builtins__": BUILTINS, **ns, "text": block, **(extra or {})}
      return eval(expr, scope)  # noqa: S307 (our own pages)

    for raw in match.group(1).splitlines():
      line = raw.split("  #", 1)[0].strip()
      if not line:
        continue
      try:
        if line.startswith("assert "):
          if not evaluate(line[len("assert "):]):
            failures.append(f"{where}: not true: {line}")
          count += 1
        elif line.startswith("text:"):
          expected = evaluate(line[len("text:"):])
          got = "\n".join(l for l in block.splitlines() if l.lstrip().startswith("|")) or block
          if got.strip() != expected.strip():
            failures.append(f"{where}: the text above is not {line[5:].strip()}:\n{expected}")
          count += len(NUMBER.findall(expected))
        elif line.startswith("in text:"):
          expected = evaluate(line[len("in text:"):])
          if " ".join(expected.split()) not in " ".join(block.split()):  # lines wrap anywhere
            failures.append(f"{where}: {expected!r} does not occur in the text above")
          count += len(NUMBER.findall(expected))
        elif line.startswith("table:"):
          rows = table_rows(block)
          assert rows, "no table above"
          for cells in rows:
            row = cells[0].replace("**", "").strip()
            expected = evaluate(line[len("table:"):], {"row": row, "cells": [c.replace("**", "").strip() for c in cells]})
            if expected is None:
              continue
            tokens = NUMBER.findall(" | ".join(cells[1:]))
            if len(tokens) != len(expected):
              failures.append(f"{where}: row {row!r} has {len(tokens)} numbers {tokens}, the check gives "
                              f"{len(expected)}")
              continue
            for token, value in zip(tokens, expected):
              if value is not None:
                count += 1
                if not matches(value, token):
                  failures.append(f"{where}: row {row!r}: {token} in the text, {value!r} in the result file")
        else:
          left, expr = (s.strip() for s in line.split("=", 1))
          if LITERAL.match(left):
            count += 1
            value = evaluate(expr)
            if not occurs(left, block):
              failures.append(f"{where}: {left} does not occur in the text it checks:\n{block}")
            elif not matches(value, left):
              failures.append(f"{where}: {left} in the text, {value!r} = {expr}")
          elif left in RESERVED:
            failures.append(f"{where}: {left!r} is reserved (bound by the checker)")
          elif left.isidentifier():
            ns[left] = evaluate(expr)
          else:
            failures.append(f"{where}: cannot read {line!r}")
      except Exception as e:  # noqa: BLE001 (report every broken check, not only the first)
        failures.append(f"{where}: {line!r}: {type(e).__name__}: {e}")
  return count, failures


@pytest.mark.parametrize("page", PAGES)
def test_every_marked_number_is_its_result_files(page):
  count, failures = run_checks(page)
  assert not failures, "\n".join(failures)
  assert count >= FLOOR.get(page, 0), f"{page}: only {count} numbers are checked (at least {FLOOR[page]} were)"


def test_a_number_changed_in_the_prose_fails():
  """The check can fail for the reason it names: one digit of the README's main-job paragraph changed."""
  text = (ROOT / "README.md").read_text()
  assert text.count("(ANN 94.70 % on them)") == 1
  _, failures = run_checks("README.md", text.replace("(ANN 94.70 % on them)", "(ANN 94.71 % on them)"))
  assert len(failures) == 1 and "94.71" in failures[0], failures


def test_a_result_file_changed_under_the_prose_fails(tmp_path):
  """... and when the file changes under the text: the same marked text against a file with another number."""
  page = ("The chosen recipe gets 93.59 % at T = 4 (ANN 94.32 %).\n"
          "<!-- check\nr = R({path!r})\n93.59 = r.acc(\"a\", 4)\n94.32 = r.ann\n-->\n")
  for name, acc, expected in (("same.json", 0.9359, 0), ("changed.json", 0.9358, 1)):
    path = tmp_path / name
    path.write_text(json.dumps({"ann_accuracy": 0.9432, "methods": {"a": {"accuracy": [0.1, 0.2, 0.3, acc]}}}))
    count, failures = run_checks("page.md", page.format(path=str(path)))
    assert count == 2 and len(failures) == expected, failures


def test_a_marked_number_the_text_does_not_show_fails_and_tables_count_their_cells():
  page = ("| method | T=4 |\n|---|---|\n| a | 10.00 |\n| b | 20.00 |\n"
          "<!-- check\ntable: [{{\"a\": 10.0, \"b\": 20.0}}[row]]{extra}\n"
          "10.00 = 10\n30.00 = 30\ntext = 1\n-->\n")
  count, failures = run_checks("page.md", page.format(extra=""))
  assert count == 4 and len(failures) == 2, failures  # 30.00 is not in the table; `text` is reserved
  assert "30.00 does not occur" in failures[0] and "reserved" in failures[1]
  _, failures = run_checks("page.md", page.format(extra=" + [None]"))
  assert any("has 1 numbers" in f for f in failures), failures
