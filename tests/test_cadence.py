"""The one default checkpoint cadence of every resumable loop: a write once a minute of work (``checkpoint_every=None``),
or every N steps when asked; the streaming passes (``runner.fold``) and the optimisation loop (``loop.optimize``)
share it."""

import numpy as np
import pytest

import jaxsnn
from jaxsnn._src import checks, files, loop

from conftest import Killed, killed_after, residual_setup


def test_cadence_counts_steps_or_seconds(monkeypatch):
  every3 = files.Cadence(3)
  assert [n for n in range(1, 10) if every3.due(n)] == [3, 6, 9]
  monkeypatch.setattr(files, "CHECKPOINT_SECONDS", 0.0)
  assert files.Cadence(None).due(1)
  monkeypatch.setattr(files, "CHECKPOINT_SECONDS", 1e9)
  timed = files.Cadence(None)
  assert not any(timed.due(n) for n in range(1, 100))
  monkeypatch.setattr(files, "CHECKPOINT_SECONDS", 5.0)
  timed.last -= 6.0  # six seconds of work since the last write
  assert timed.due(1)
  timed.wrote()
  assert not timed.due(2)
  assert checks.checkpoint_every(None, "test") is None and checks.checkpoint_every(7, "test") == 7
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="checkpoint_every"):
      checks.checkpoint_every(bad, "test")


def _optimize(batches, path, **kw):
  seen = []

  def prepare(x):
    seen.append(float(x))
    return (np.float32(x),)

  update = lambda p, o, x: (p + x, o, x * 0.0)  # noqa: E731
  out = loop.optimize(update, np.float32(0.0), (), batches, 6, caller="test", prepare=prepare, checkpoint=path,
                      fingerprint="job", **kw)
  return out, seen


@pytest.mark.parametrize("seconds, resumed_at", [(0.0, 4), (1e9, 0)])
def test_the_default_cadence_writes_by_time_in_the_optimisation_loop(tmp_path, monkeypatch, seconds, resumed_at):
  monkeypatch.setattr(files, "CHECKPOINT_SECONDS", seconds)
  path = tmp_path / "loop.npz"
  with pytest.raises(Killed):
    _optimize(killed_after([np.float32(i) for i in range(1, 7)], 4), path)  # four updates made, then killed
  assert path.exists() == (resumed_at > 0)
  out, seen = _optimize([np.float32(i) for i in range(1, 7)], path)
  assert seen == [float(i) for i in range(resumed_at + 1, 7)]  # only the updates the checkpoint does not hold
  assert float(out["last"]) == 21.0  # 1 + ... + 6, as an uninterrupted run


@pytest.mark.parametrize("seconds, simulated", [(0.0, 2), (1e9, 5)])
def test_the_default_cadence_writes_by_time_in_the_streaming_passes(tmp_path, monkeypatch, seconds, simulated):
  monkeypatch.setattr(files, "CHECKPOINT_SECONDS", seconds)
  apply_fn, variables, x, th = residual_setup()
  snn = jaxsnn.convert(apply_fn, variables, x, th)
  labels = np.asarray(apply_fn(variables, x)).argmax(-1)
  batches = [(x[i:i + 1], labels[i:i + 1]) for i in range(5)]
  path = tmp_path / "progress.npz"

  with pytest.raises(Killed):
    jaxsnn.evaluate(snn, killed_after(batches, 3), 6, checkpoint=path, micro_batch=1)
  runs = []
  original = jaxsnn._src.runner.prepare

  def counting(*a, **k):
    runs.append(1)
    return original(*a, **k)

  monkeypatch.setattr(jaxsnn._src.runner, "prepare", counting)
  resumed = jaxsnn.evaluate(snn, batches, 6, checkpoint=path, micro_batch=1)
  assert len(runs) == simulated  # after a write per group, only the last two are simulated again
  np.testing.assert_array_equal(resumed.correct, jaxsnn.evaluate(snn, batches, 6, micro_batch=1).correct)
