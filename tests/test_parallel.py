"""Data parallelism over devices: with 4 fake CPU devices (a subprocess, since XLA fixes the device count at start),
calibration, evaluation and SNN calibration equal the 1-device results bit for bit, with batches that do not divide
by 4; explicit sharding (jax.set_mesh with an explicit batch axis) runs both schedules, calibrate and evaluate."""

import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def test_four_devices_equal_one_bit_for_bit():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, str(HERE / "parallel_check.py")], env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result == {k: True for k in result} and len(result) == 13, result
