"""jaxsnn.training (the CPU allocator): when and how training re-executes itself under tcmalloc."""

import os
import pathlib
import subprocess
import sys

import pytest

from jaxsnn import training as cpu_allocator

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fake_lib(tmp_path):
  (tmp_path / cpu_allocator.TCMALLOC).write_bytes(b"")
  return [str(tmp_path / "missing"), str(tmp_path)]


def test_preloads_the_first_library_found_and_keeps_other_preloads(tmp_path):
  env = cpu_allocator.tcmalloc_environ({"LD_PRELOAD": "/x/other.so", "PATH": "/bin"}, _fake_lib(tmp_path))
  assert env["LD_PRELOAD"] == f"{tmp_path / cpu_allocator.TCMALLOC}:/x/other.so"
  assert env["TCMALLOC_RELEASE_RATE"] == "0" and env["PATH"] == "/bin"


def test_user_settings_win(tmp_path):
  env = cpu_allocator.tcmalloc_environ({"TCMALLOC_RELEASE_RATE": "5"}, _fake_lib(tmp_path))
  assert env["TCMALLOC_RELEASE_RATE"] == "5"


@pytest.mark.parametrize("environ", [{"JAXSNN_MALLOC": "system"}, {"LD_PRELOAD": "/lib/libtcmalloc.so.4"}])
def test_no_reexec_when_disabled_or_already_loaded(environ, tmp_path):
  assert cpu_allocator.tcmalloc_environ(environ, _fake_lib(tmp_path)) is None


def test_no_reexec_without_the_library(tmp_path):
  assert cpu_allocator.tcmalloc_environ({}, [str(tmp_path)]) is None


@pytest.mark.skipif(cpu_allocator.tcmalloc_environ({}) is None or not sys.platform.startswith("linux"),
                    reason="libtcmalloc_minimal.so.4 is not installed on this machine")
def test_use_tcmalloc_reexecs_the_script_with_the_library_loaded(tmp_path):
  script = tmp_path / "probe.py"
  script.write_text(
      "import sys\n"
      f"sys.path.insert(0, {str(ROOT)!r})\n"
      "from jaxsnn.training import use_tcmalloc\n"
      "print('start', flush=True)\n"
      "use_tcmalloc()\n"
      "print('tcmalloc' in open('/proc/self/maps').read(), sys.argv[1:])\n")
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "JAXSNN_MALLOC")}
  out = subprocess.run([sys.executable, str(script), "a", "b"], env=env, capture_output=True, text=True,
                       check=True).stdout.split("\n")
  assert out[:3] == ["start", "start", "True ['a', 'b']"]
