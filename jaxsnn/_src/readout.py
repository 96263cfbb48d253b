"""The readout delay: which first steps to leave out of the answer, chosen by agreement with the ANN."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from jaxsnn._src import checks, ir, parallel, runner
from jaxsnn._src.convert import SpikingNetwork
from jaxsnn._src.reports import Report
from jaxsnn._src.simulate import check_batch, check_snn, simulate


def choose_readout_delay(snn: SpikingNetwork, batches: Iterable[Any], num_steps: int, *,
                         block_size: int | None = None, progress: bool = False, mesh=None,
                         micro_batch: int = runner.MICRO_BATCH,
                         input_key: str = "image") -> tuple[SpikingNetwork, Report]:
  """The readout delay under which the SNN's answer after ``num_steps`` agrees most often with its ANN's.

  In the first steps of a deep SNN the late layers have not started to fire in proportion to their inputs (the
  charge is still travelling through the earlier ones), so the output of those steps is off; at a small T they
  weigh on the average. A readout delay ``d`` (:attr:`SpikingNetwork.readout_delay`) averages the output over steps
  ``d + 1 .. T`` only; the simulation still runs T steps (same latency and cost). SpikingJelly's converter has a
  rule of this kind (``estimate_delay_start``); here ``d`` is chosen by what it is for: on the given inputs, the
  SNN is simulated once and, for every ``d = 0 .. T - 1``, the predicted class (argmax) read over steps ``d + 1 .. T``
  is compared with the ANN's; the ``d`` with the most agreements wins (the smallest on a tie). No labels are read:
  give it training inputs (never the test set).

  A pure function: it returns a new network (the same one with ``readout_delay = d``; data only, nothing
  recompiles) and a report with the agreement of every candidate.

  Args:
    snn: a converted network, e.g. after :func:`calibrate_snn` at ``num_steps`` (its current delay is ignored).
    batches: a few training batches in any form of the batch protocol, e.g. 1,000 images (labels are not read).
    num_steps: the T the network will be run for.
    block_size: schedule, as in :func:`simulate` (same result).
    progress: a tqdm bar.
    mesh: as in :func:`jaxsnn.calibrate` (default: all local devices).
    micro_batch: as in :func:`jaxsnn.calibrate`.
    input_key: the input's key in dict batches.

  Returns:
    ``(snn with the chosen readout_delay, report)``: ``report.chose["readout_delay"]`` is ``d``,
    ``report.agreement`` the agreement with the ANN under it, and ``report.details["agreement"][d]`` the fraction of
    the inputs on which the readout over steps ``d + 1 .. T`` picks the ANN's class, for every ``d``.

  Raises:
    ValueError: for a bad T or empty batches.

  Example:
    >>> snn, _ = jaxsnn.calibrate_snn(snn, [x_train[:256]], num_steps=8)
    >>> snn, report = jaxsnn.choose_readout_delay(snn, [x_train[256:1280]], num_steps=8)
  """
  caller = "jaxsnn.choose_readout_delay"
  t0 = time.perf_counter()
  check_snn(snn, caller)
  num_steps = checks.num_steps(num_steps, caller)
  mesh = parallel.batch_mesh(mesh, caller)
  plain = parallel.replicate(mesh, snn.replace(readout_delay=0))
  variables = parallel.replicate(mesh, snn.variables)
  steps = np.arange(1, num_steps + 1, dtype=np.float64)

  def step(hits, p: runner.Prepared):
    check_batch(snn, p.x, caller)
    size = p.mask.shape[0]
    want = np.asarray(ir.ann_outputs(snn.traced, variables, p.x)[1]).reshape(size, -1).argmax(-1)
    out = np.asarray(simulate(plain, p.x, num_steps, block_size=block_size, tallies=False).outputs, np.float64)
    cum = out.reshape(num_steps, size, -1) * steps[:, None, None]  # cum[t - 1]: the readout summed over steps 1..t
    hits = np.asarray(hits, np.int64).copy()
    for d in range(num_steps):
      window = cum[-1] - (cum[d - 1] if d else 0.0)
      hits[d] += int(((window.argmax(-1) == want) & p.mask).sum())
    return hits

  hits, count = runner.fold(batches, step, np.zeros(num_steps, np.int64), caller=caller, mesh=mesh,
                            micro_batch=micro_batch, input_key=input_key, finite="the SNN tools compare the network with its ANN on training inputs", progress=progress, desc=f"choose_readout_delay T={num_steps}")
  if count == 0:
    raise ValueError(f"{caller}: every example of the batches is masked out; pass a few batches of training inputs.")
  agreement = hits / count
  delay = int(np.argmax(agreement))
  report = Report("readout_delay", {"readout_delay": delay}, examples=count, num_steps=num_steps,
                  agreement=float(agreement[delay]), details={"agreement": agreement},
                  seconds=time.perf_counter() - t0)
  return snn.replace(readout_delay=delay), report
