"""Run by tests/test_parallel.py in a process with 4 fake CPU devices: data-parallel results vs one device.

Prints one JSON line: which comparisons held bit for bit.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec  # noqa: E402

import jaxsnn  # noqa: E402
from conftest import random_net  # noqa: E402


def same(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def main():
  assert len(jax.devices()) == 4, jax.devices()
  one = Mesh(np.asarray(jax.devices()[:1]), ("batch",))
  apply_fn, variables, x = random_net(3, allow_max_pool=True)
  x = np.concatenate([np.asarray(x), np.asarray(x)[:4] * 0.5])  # 12 images
  batches = [x[:7], x[7:]]  # 7 and 5: neither divides by 4
  out = {}
  # micro_batch=2: 12 images make 6 micro-batches, two calls of 4 devices (the second one half padding).
  mb = dict(micro_batch=2)
  ref = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True, mesh=one, **mb)
  got = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True, **mb)  # default: the 4 local devices
  out["calibrate"] = same(ref.max, got.max) and same(ref.hist, got.hist) and ref.num_samples == got.num_samples == 12
  hist_ref = jaxsnn.ratio_histograms(apply_fn, variables, batches, ref, mesh=one, **mb)
  hist_got = jaxsnn.ratio_histograms(apply_fn, variables, batches, ref, **mb)
  # float sums: made per micro-batch and added in micro-batch order, so equal bit for bit too
  out["ratio_histograms"] = same(hist_ref.counts, hist_got.counts)
  snn = jaxsnn.convert(apply_fn, variables, x, jaxsnn.thresholds(ref), initial_potential=0.5)
  labels = np.asarray(apply_fn(variables, x)).argmax(-1)
  eval_batches = [(x[:7], labels[:7]), (x[7:], labels[7:], np.array([True, True, True, False, True]))]
  for block in (None, 4):
    e1 = jaxsnn.evaluate(snn, eval_batches, 9, block_size=block, record_steps=(3, 9), tallies=True, mesh=one,
                         micro_batch=3)
    e4 = jaxsnn.evaluate(snn, eval_batches, 9, block_size=block, record_steps=(3, 9), tallies=True, micro_batch=3)
    out[f"evaluate_block_{block}"] = (same(e1.correct, e4.correct) and e1.count == e4.count == 11
                                      and e1.pos_spikes == e4.pos_spikes and e1.neg_spikes == e4.neg_spikes
                                      and same(e1.recorded, e4.recorded))
  for target, field in (("offset", "offsets"), ("potential", "initial_potential")):
    c1, _ = jaxsnn.calibrate_snn(snn, batches, 5, target=target, mesh=one, **mb)
    c4, _ = jaxsnn.calibrate_snn(snn, batches, 5, target=target, **mb)
    # Equal on one and four devices, and the calibration did change the field (the comparison is not of zeros).
    moved = any(bool((np.asarray(a) != np.asarray(b)).any())
                for a, b in zip(jax.tree_util.tree_leaves(getattr(c1, field)),
                                jax.tree_util.tree_leaves(getattr(snn, field))))
    out[f"calibrate_snn_{target}"] = same(getattr(c1, field), getattr(c4, field)) and moved
  # The optimisers shard their gradient steps too: the same descent, its sums over the batch in another order.
  t1, tr1 = jaxsnn.tune_snn(snn, [x[:8]], 5, iterations=3, mesh=one)
  t4, tr4 = jaxsnn.tune_snn(snn, [x[:8]], 5, iterations=3)
  out["tune_snn_close"] = bool(np.allclose(tr1.details["losses"], tr4.details["losses"], rtol=1e-4, atol=1e-6))
  f1, fr1 = jaxsnn.finetune(snn, [(x[:8], labels[:8])], 5, iterations=2, learning_rate=1e-3, mesh=one)
  f4, fr4 = jaxsnn.finetune(snn, [(x[:8], labels[:8])], 5, iterations=2, learning_rate=1e-3)
  out["finetune_close"] = bool(np.allclose(fr1.details["losses"], fr4.details["losses"], rtol=1e-4, atol=1e-6))
  d1, r1 = jaxsnn.choose_readout_delay(snn, batches, 6, mesh=one, **mb)
  d4, r4 = jaxsnn.choose_readout_delay(snn, batches, 6, **mb)
  out["choose_readout_delay"] = same(r1.details["agreement"], r4.details["agreement"])

  # Explicit sharding (the caller's own mesh with an explicit batch axis): batches are used as the caller cut and
  # sharded them, 2 examples per device here; one device given the same per-device shape (micro-batches of 2, or
  # slices of 2) computes the same numbers.
  single = {b: [jaxsnn.simulate(snn, x[i:i + 2], 9, block_size=b, record_steps=(9,)) for i in range(0, 8, 2)]
            for b in (None, 4)}
  single_max = jaxsnn.calibrate(apply_fn, variables, [x[:8]], mesh=one, **mb).max
  single_correct = jaxsnn.evaluate(snn, [(x[:8], labels[:8])], 9, mesh=one, **mb).correct
  mesh = jax.make_mesh((4,), ("batch",), axis_types=(AxisType.Explicit,))
  with jax.set_mesh(mesh):
    xs = jax.device_put(x[:8], NamedSharding(mesh, PartitionSpec("batch")))
    for b in (None, 4):
      tr = jaxsnn.simulate(snn, xs, 9, block_size=b, record_steps=(9,))
      outs = np.concatenate([np.asarray(t.outputs) for t in single[b]], axis=1)
      spikes = {k: sum(np.asarray(t.recorded["pos"][k]) for t in single[b]) for k in tr.recorded["pos"]}
      out[f"explicit_simulate_block_{b}"] = (np.array_equal(np.asarray(tr.outputs), outs)
                                             and same(tr.recorded["pos"], spikes))
    st = jaxsnn.calibrate(apply_fn, variables, [xs])
    out["explicit_calibrate"] = same(st.max, single_max)
    ev = jaxsnn.evaluate(snn, [(xs, labels[:8])], 9)
    out["explicit_evaluate"] = same(ev.correct, single_correct)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
