"""experiments/batch.py: two processes on localhost (CPU collectives) write the same JSON as one, and a job killed
mid-way and started again with the same command writes the same JSON as an uninterrupted one."""

import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--num_test", "200", "--num_steps", "6", "--calib_examples", "400", "--batch_size", "50",
        "--checkpoint_every", "1"]


def batch(out, *extra, wait=True):
  cmd = [sys.executable, str(ROOT / "experiments/batch.py"), *ARGS, "--out", str(out), *extra]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return proc.communicate(timeout=600) + (proc.returncode,) if wait else proc


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  out = tmp_path_factory.mktemp("single")
  _, err, rc = batch(out)
  assert rc == 0, err[-3000:]
  return (out / "result.json").read_bytes()


def test_two_processes_write_the_same_json_as_one(single, tmp_path):
  coordinator = f"localhost:{free_port()}"
  procs = [batch(tmp_path, "--coordinator", coordinator, "--num_processes", "2", "--process_id", str(i), wait=False)
           for i in (1, 0)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  assert (tmp_path / "result.json").read_bytes() == single
  assert sorted(p.name for p in tmp_path.glob("progress_*.npz")) == ["progress_0.npz", "progress_1.npz"]


def test_a_killed_job_resumes_to_the_same_json(single, tmp_path):
  _, _, rc = batch(tmp_path, "--stop_after", "2")
  assert rc == 3 and not (tmp_path / "result.json").exists()
  from jaxsnn._src import files
  job = files.checkpoint_job(tmp_path / "progress_0.npz")
  saved = files.load_checkpoint(tmp_path / "progress_0.npz", job, "test", "")
  assert saved["groups"] == 2 and saved["count"] == 100  # two micro-batches of 50 are done and on disk
  _, err, rc = batch(tmp_path)
  assert rc == 0, err[-3000:]
  assert (tmp_path / "result.json").read_bytes() == single
  # Another job's progress file is refused, not silently reused (T = 7 given by the old spelling, an alias).
  _, err, rc = batch(tmp_path, "--steps", "7")
  assert rc != 0 and "belongs to another job" in err
