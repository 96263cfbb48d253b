"""XLA's fast CPU kernels: jaxsnn's own computations carry them whoever calls (the same bits as the scripts' flag), the
entry points also set the flag (an opt-out), and importing jaxsnn never changes the environment. Every exactness test of
the suite (schedules, step function, padding, devices) runs under them, since this process sets no XLA_FLAGS."""

import json
import os
import subprocess
import sys

import jaxsnn.xla
from conftest import ROOT

FLAG = jaxsnn.xla.FAST_CPU_FLAGS[0]


def test_flags_are_added_once_kept_beside_the_users_and_can_be_opted_out_of():
  assert jaxsnn.xla.fast_cpu_xla_flags({}) == FLAG
  assert jaxsnn.xla.fast_cpu_xla_flags({"XLA_FLAGS": "--xla_foo=1"}) == f"--xla_foo=1 {FLAG}"
  assert jaxsnn.xla.fast_cpu_xla_flags({"XLA_FLAGS": FLAG}) is None  # already there
  assert jaxsnn.xla.fast_cpu_xla_flags({"XLA_FLAGS": FLAG.replace("dot", "none")}) is None  # the user's own value wins
  for off in ("0", "false", "off"):
    assert jaxsnn.xla.fast_cpu_xla_flags({"JAXSNN_FAST_CPU": off}) is None
  env = {"XLA_FLAGS": "--xla_foo=1"}
  assert jaxsnn.xla.use_fast_cpu_kernels(env) and env["XLA_FLAGS"] == f"--xla_foo=1 {FLAG}"
  assert not jaxsnn.xla.use_fast_cpu_kernels(env)


def flags_after(code, extra_env=None):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXSNN_FAST_CPU")}
  env.update(extra_env or {})
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "experiments", env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.strip().splitlines()[-1]


def test_importing_jaxsnn_or_the_experiments_changes_nothing_and_the_scripts_opt_in_by_default():
  probe = "import os, {}; print(repr(os.environ.get('XLA_FLAGS')))"
  assert flags_after(probe.format("jaxsnn, jaxsnn.xla")) == "None"
  assert flags_after(probe.format("common")) == "None"  # the experiments' shared module does not either
  # Every conversion script turns them on first thing in main().
  for script in ("main", "paper", "batch", "finetune", "site_errors", "conversion_analysis", "fig3_information_loss"):
    text = (ROOT / "experiments" / f"{script}.py").read_text()
    body = text.split("def main():\n", 1)[1]
    assert body.lstrip().startswith("jaxsnn.xla.use_fast_cpu_kernels()"), script
  on = "import os, jaxsnn.xla; jaxsnn.xla.use_fast_cpu_kernels(); print(os.environ.get('XLA_FLAGS'))"
  assert flags_after(on) == FLAG
  assert flags_after(on, {"JAXSNN_FAST_CPU": "0"}) == "None"


def kernels(extra_env):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXSNN_FAST_CPU")}
  env.update(extra_env)
  proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kernels_check.py")], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_jaxsnns_computations_get_the_fast_kernels_whoever_calls_them(monkeypatch):
  """A notebook that never sets XLA_FLAGS computes exactly what a script with the flag computes: jaxsnn's own
  computations carry the option themselves (and an opt-out, or the user's own flag, leaves XLA's choice alone)."""
  library = kernels({})  # a user's process: no flag anywhere
  script = kernels({"XLA_FLAGS": FLAG})  # what the entry points set
  assert library["options"] == {"xla_cpu_experimental_ynn_fusion_type": 1}
  assert script["options"] is None  # the flag is the process's own: nothing added
  assert library["digest"] == script["digest"]
  from jaxsnn._src import jitting
  for env, want in (({"JAXSNN_FAST_CPU": "0"}, None), ({"XLA_FLAGS": FLAG.replace("dot", "none")}, None),
                    ({}, {"xla_cpu_experimental_ynn_fusion_type": 1})):
    monkeypatch.delenv("JAXSNN_FAST_CPU", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for k, v in env.items():
      monkeypatch.setenv(k, v)
    jitting.options.cache_clear()
    assert jitting.options() == want, env
  jitting.options.cache_clear()
