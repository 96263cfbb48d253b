"""Ordinary mistakes get a clear error, never a believable wrong number; and what jaxsnn promises about numbers holds by
construction: the streaming functions' results depend only on the real examples, their order and ``micro_batch``.

Each misuse of issue 32 has its test here (labels out of range, a NaN loss, empty batches, a frame of another batch,
one-shot validation data, ...); property tests (hypothesis) feed the public entry points random bad batches and random
re-batchings of the same examples.
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from jaxsnn._src import files
from conftest import Tiny

X = jnp.asarray(np.random.default_rng(5).normal(size=(20, 6)), jnp.float32)
SETTINGS = dict(deadline=None, max_examples=12, derandomize=True,
                suppress_health_check=[hypothesis.HealthCheck.too_slow])


@functools.cache
def net():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  labels = np.asarray(model.apply(variables, X)).argmax(-1).astype(np.int32)
  snn = jaxsnn.convert(model.apply, variables, X, jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [X])),
                       initial_potential=0.5)
  return model.apply, variables, labels, snn


# ---- labels ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift,count", [(1, None), (-1, None), (99, 5)])
def test_labels_out_of_range_are_an_error_that_names_them(shift, count):
  apply_fn, variables, labels, snn = net()
  bad = labels.copy()
  if count is None:
    bad = bad + shift  # 1-based labels (or shifted down): some fall outside [0, 3)
  else:
    bad[:count] = shift
  n = int(((bad < 0) | (bad >= 3)).sum())
  values = ", ".join(str(v) for v in np.unique(bad[(bad < 0) | (bad >= 3)]))
  message = rf"{n} of 20 labels of a batch are outside \[0, 3\) \(the network has 3 outputs\): {values}"
  with pytest.raises(ValueError, match="jaxsnn.evaluate: " + message):
    jaxsnn.evaluate(snn, [(X, bad)], 8)
  trace = jaxsnn.simulate(snn, X, 8)
  with pytest.raises(ValueError, match="jaxsnn.accuracy_vs_time: " + message):
    jaxsnn.accuracy_vs_time(trace, bad)
  with pytest.raises(ValueError, match="jaxsnn.finetune: " + message):
    jaxsnn.finetune(snn, [(X, bad)], 4, iterations=2)
  with pytest.raises(ValueError, match=r"jaxsnn.finetune: validation: " + message):
    jaxsnn.finetune(snn, [(X, labels)], 4, iterations=2, validation=[(X, bad)])
  # Labels on masked rows (padding) are never read.
  mask = (bad >= 0) & (bad < 3)
  if mask.any():
    assert jaxsnn.evaluate(snn, [(X, bad, mask)], 8).count == int(mask.sum())


def test_one_based_labels_get_a_hint():
  _, _, labels, snn = net()
  one_based = labels + 1
  if one_based.max() == 3:  # only when the top label reaches `classes` is it recognisably 1-based
    with pytest.raises(ValueError, match=r"1-based labels\? subtract 1"):
      jaxsnn.evaluate(snn, [(X, one_based)], 4)


def test_ann_metrics_checks_labels_masks_and_counts_like_the_snns_evaluate():
  from jaxsnn import training
  model = Tiny()
  x = jax.random.normal(jax.random.key(1), (10, 6))
  variables = model.init(jax.random.key(0), x[:1])
  with pytest.raises(ValueError, match=r"jaxsnn.training.ann_accuracy: 10 of 10 labels .* outside \[0, 3\)"):
    training.ann_accuracy(model.apply, variables, [(x, np.full(10, 7, np.int32))])
  with pytest.raises(ValueError, match=r"jaxsnn.training.ann_metrics: .* needs labels"):
    training.ann_metrics(model.apply, variables, [x])
  logits = np.asarray(model.apply(variables, x))
  labels = logits.argmax(-1).astype(np.int32)
  labels[:3] = (labels[:3] + 1) % 3  # three wrong
  mask = np.arange(10) < 8  # the last two (right) ones masked out
  m = training.ann_metrics(model.apply, variables, [(x[:4], labels[:4], mask[:4]), (x[4:], labels[4:], mask[4:])])
  assert (m.accuracy, m.count) == (5 / 8, 8)
  loss = -jax.nn.log_softmax(logits)[np.arange(8), labels[:8]].mean()
  np.testing.assert_allclose(m.loss, loss, rtol=1e-6)


# ---- a non-finite loss stops the optimisers -----------------------------------------------------------------------
def test_finetune_stops_on_a_non_finite_loss_naming_step_and_batch(tmp_path):
  _, _, labels, snn = net()
  poisoned = X.at[3, 0].set(jnp.nan)  # a NaN input: its readout is NaN, and so the loss
  batches = [(X[:10], labels[:10]), (X[10:], labels[10:]), (poisoned[:10], labels[:10])]
  path = tmp_path / "ft.npz"
  with pytest.raises(jaxsnn.NonFiniteLossError, match=r"jaxsnn.finetune: the loss is nan at iteration 3 \(epoch 0, "
                     r"batch 2 of the epoch\); the update was not applied") as info:
    jaxsnn.finetune(snn, batches, 4, iterations=5, learning_rate=1e-2, checkpoint=path, checkpoint_every=100)
  err = info.value
  assert (err.iteration, err.epoch, err.batch) == (3, 0, 2)
  assert isinstance(err.best, jaxsnn.SpikingNetwork)
  # The checkpoint holds the state before the bad iteration (two), and the best network so far is finite.
  saved = files.load_checkpoint(path, files.checkpoint_job(path), "test", "")
  assert saved["step"] == 2
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(err.best.variables))


def test_tune_snn_refuses_non_finite_inputs_and_stops_on_a_diverging_loss():
  _, _, _, snn = net()
  with pytest.raises(ValueError, match=r"jaxsnn.tune_snn: 1 of 10 examples of a batch hold a NaN or an infinity"):
    jaxsnn.tune_snn(snn, [X[:10], X[10:].at[0, 0].set(jnp.nan)], 4, iterations=4)
  with pytest.raises(jaxsnn.NonFiniteLossError, match=r"jaxsnn.tune_snn: the loss is nan at iteration 2 \(epoch 0, "
                     r"batch 1"):
    jaxsnn.tune_snn(snn, [X[:10], X[10:]], 4, iterations=6, learning_rate=1e5)  # thresholds overflow


# ---- edges ----------------------------------------------------------------------------------------------------------
def test_empty_batches_are_clear_errors():
  apply_fn, variables, labels, snn = net()
  empty = X[:0]
  with pytest.raises(ValueError, match=r"jaxsnn.simulate: the input batch is empty \(0 examples\)"):
    jaxsnn.simulate(snn, empty, 4)
  with pytest.raises(ValueError, match=r"jaxsnn.init_state: the input batch is empty"):
    jaxsnn.init_state(snn, empty)
  with pytest.raises(ValueError, match=r"jaxsnn.calibrate: every example of the batches is masked out \(or every "
                     "batch is empty\\)"):
    jaxsnn.calibrate(apply_fn, variables, [empty])
  with pytest.raises(ValueError, match="jaxsnn.calibrate: batches is empty"):
    jaxsnn.calibrate(apply_fn, variables, [])
  with pytest.raises(ValueError, match="jaxsnn.evaluate: every example of the batches is masked out"):
    jaxsnn.evaluate(snn, [(empty, labels[:0])], 4)
  with pytest.raises(ValueError, match="jaxsnn.calibrate_snn: every example"):
    jaxsnn.calibrate_snn(snn, [(X, None, np.zeros(20, bool))], 4)


def test_step_checks_its_frame_against_the_state():
  _, _, _, snn = net()
  state = jaxsnn.init_state(snn, X)
  with pytest.raises(ValueError, match="jaxsnn.step: this step's input has 10 examples but the state holds 20"):
    jaxsnn.step(snn, state, X[:10])
  other = jaxsnn.convert(lambda v, x: jax.nn.relu(x @ v["w"]) @ v["u"],
                         {"w": jnp.ones((6, 5)), "u": jnp.ones((5, 3))}, X, {"relu": jnp.ones(5)})
  with pytest.raises(ValueError, match="jaxsnn.step: the state's neuron sites"):
    jaxsnn.step(other, state)


def test_errors_name_the_public_function_called():
  _, _, labels, snn = net()
  for bad in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match="^jaxsnn.evaluate: num_steps must be a positive int"):
      jaxsnn.evaluate(snn, [(X, labels)], bad)
    with pytest.raises(ValueError, match="^jaxsnn.agreement: num_steps must be a positive int"):
      jaxsnn.agreement(snn, [X], bad)
  with pytest.raises(ValueError, match="^jaxsnn.evaluate: record_steps"):
    jaxsnn.evaluate(snn, [(X, labels)], 4, record_steps=(5,))
  with pytest.raises(ValueError, match="^jaxsnn.evaluate: micro_batch must be a positive int"):
    jaxsnn.evaluate(snn, [(X, labels)], 4, micro_batch=0)


def test_finetune_validation_may_be_a_one_shot_iterator_and_is_named_when_empty():
  _, _, labels, snn = net()
  batches = [(X[:10], labels[:10]), (X[10:], labels[10:])]
  _, listed = jaxsnn.finetune(snn, batches, 4, iterations=4, validate_every=2, validation=[(X, labels)])
  _, once = jaxsnn.finetune(snn, batches, 4, iterations=4, validate_every=2, validation=iter([(X, labels)]))
  assert listed.details["validation"] == once.details["validation"] and len(once.details["validation"]) == 3
  with pytest.raises(ValueError, match="jaxsnn.finetune: validation is empty"):
    jaxsnn.finetune(snn, batches, 4, iterations=2, validation=iter([]))
  with pytest.raises(ValueError, match="jaxsnn.finetune: validation: a batch has no labels"):
    jaxsnn.finetune(snn, batches, 4, iterations=2, validation=[X])


# ---- property tests ---------------------------------------------------------------------------------------------------
@st.composite
def rebatched(draw):
  """The 20 examples of X cut into random batches, some with masked garbage rows, in random forms."""
  _, _, labels, _ = net()
  cuts = sorted(draw(st.sets(st.integers(1, 19), max_size=5)))
  out = []
  for lo, hi in zip([0] + cuts, cuts + [20]):
    x, y = np.asarray(X[lo:hi]), labels[lo:hi]
    pad = draw(st.integers(0, 3))
    if pad:
      x = np.concatenate([x, np.full((pad, 6), draw(st.sampled_from([1e3, np.nan, -7.0])), np.float32)])
      y = np.concatenate([y, np.full(pad, draw(st.sampled_from([0, 99, -1])), np.int32)])
      mask = np.arange(len(x)) < hi - lo
      out.append(draw(st.sampled_from([(x, y, mask), {"image": x, "label": y, "mask": mask}])))
    else:
      out.append(draw(st.sampled_from([(x, y), {"image": x, "label": y}])))
  return out


@hypothesis.settings(**SETTINGS)
@hypothesis.given(rebatched(), st.sampled_from([4, 7, 128]))
def test_numbers_depend_on_the_examples_not_on_how_they_are_cut_padded_or_masked(batches, micro_batch):
  apply_fn, variables, labels, snn = net()
  mb = dict(micro_batch=micro_batch)
  stats = jaxsnn.calibrate(apply_fn, variables, batches, histogram=True, **mb)
  want = jaxsnn.calibrate(apply_fn, variables, [X], histogram=True, **mb)
  jax.tree_util.tree_map(np.testing.assert_array_equal, (stats.max, stats.hist), (want.max, want.hist))
  got = jaxsnn.evaluate(snn, batches, 6, tallies=True, **mb)
  ref = jaxsnn.evaluate(snn, [(X, labels)], 6, tallies=True, **mb)
  np.testing.assert_array_equal(got.correct, ref.correct)
  assert got.pos_spikes == ref.pos_spikes and got.count == 20
  cal, _ = jaxsnn.calibrate_snn(snn, batches, 5, **mb)
  cal_ref, _ = jaxsnn.calibrate_snn(snn, [X], 5, **mb)
  jax.tree_util.tree_map(np.testing.assert_array_equal, cal.initial_potential, cal_ref.initial_potential)
  hist = jaxsnn.ratio_histograms(apply_fn, variables, batches, want, **mb)
  hist_ref = jaxsnn.ratio_histograms(apply_fn, variables, [X], want, **mb)
  jax.tree_util.tree_map(np.testing.assert_array_equal, hist.counts, hist_ref.counts)


BAD = ["empty", "float_labels", "labels_too_big", "negative_labels", "mask_not_bool", "mask_shape", "wrong_shape",
       "wrong_dtype", "all_masked", "nan_input", "one_array", "ragged", "bool_labels", "labels_shape", "string"]


def bad_batches(kind, labels):
  x = np.asarray(X)
  return {
      "empty": [(x[:0], labels[:0])],
      "float_labels": [(x, labels.astype(np.float32))],
      "labels_too_big": [(x, labels + 3)],
      "negative_labels": [(x, labels - 3)],
      "mask_not_bool": [(x, labels, np.ones(20, np.int32))],
      "mask_shape": [(x, labels, np.ones(19, bool))],
      "wrong_shape": [(x[:, :5], labels)],
      "wrong_dtype": [(x.astype(np.float16), labels)],
      "all_masked": [(x, labels, np.zeros(20, bool))],
      "nan_input": [(np.where(np.arange(20)[:, None] == 4, np.nan, x).astype(np.float32), labels)],
      "one_array": x,
      "ragged": [(x, labels[:7])],
      "bool_labels": [(x, labels > 0)],
      "labels_shape": [(x, labels[:, None].repeat(2, 1))],
      "string": "images",
  }[kind]


@pytest.mark.parametrize("entry", ["evaluate", "calibrate", "calibrate_snn", "agreement", "finetune"])
@pytest.mark.parametrize("kind", BAD)
def test_bad_batches_give_a_clear_error_or_a_correct_answer(kind, entry):
  apply_fn, variables, labels, snn = net()
  batches = bad_batches(kind, labels)
  call = {
      "evaluate": lambda b: jaxsnn.evaluate(snn, b, 4),
      "calibrate": lambda b: jaxsnn.calibrate(apply_fn, variables, b),
      "calibrate_snn": lambda b: jaxsnn.calibrate_snn(snn, b, 4),
      "agreement": lambda b: jaxsnn.agreement(snn, b, 4),
      "finetune": lambda b: jaxsnn.finetune(snn, b, 4, iterations=1),
  }[entry]
  name = "jaxsnn." + entry
  uses_labels = entry in ("evaluate", "finetune")
  try:
    result = call(batches)
  except jaxsnn.NonFiniteLossError as e:
    assert kind == "nan_input" and entry == "finetune", (kind, entry, e)
    return
  except ValueError as e:
    assert str(e).startswith(name + ":"), (kind, entry, str(e))
    return
  # No error: only where the answer is the right one.
  if kind == "nan_input" and entry == "evaluate":  # a documented rule: the NaN example counts as wrong (and warns)
    assert result.non_finite == 1 and result.count == 20
    return
  if entry == "calibrate" and kind == "wrong_dtype":
    return  # the ANN defines the inputs it takes: a Flax net computes on float16 inputs, and these are its maxima
  assert not uses_labels and kind in ("labels_too_big", "negative_labels"), f"{entry} accepted bad batches {kind!r}"
  # Labels that this function does not read: the answer is the one on the same inputs unlabelled.
  want = call([np.asarray(X)])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                         _numbers(result), _numbers(want))


def _numbers(result):
  if isinstance(result, jaxsnn.Stats):
    return result.max
  if isinstance(result, tuple):  # (snn, report)
    return result[0].initial_potential
  return result


@hypothesis.settings(**dict(SETTINGS, max_examples=25))
@hypothesis.given(st.lists(st.integers(-4, 6), min_size=20, max_size=20),
                  st.lists(st.booleans(), min_size=20, max_size=20))
def test_random_labels_and_masks_give_the_right_accuracy_or_name_the_bad_labels(labels, mask):
  _, _, _, snn = net()
  labels, mask = np.asarray(labels, np.int32), np.asarray(mask)
  bad = mask & ((labels < 0) | (labels >= 3))
  pred = np.asarray(jaxsnn.simulate(snn, X, 5).outputs).argmax(-1)  # [T, 20]
  try:
    ev = jaxsnn.evaluate(snn, [(X, labels, mask)], 5)
  except ValueError as e:
    if not mask.any():
      assert "every example of the batches is masked out" in str(e)
    else:
      assert bad.any() and f"{int(bad.sum())} of {int(mask.sum())} labels of a batch are outside [0, 3)" in str(e)
    return
  assert not bad.any() and mask.any()
  np.testing.assert_array_equal(ev.correct, (pred[:, mask] == labels[mask]).sum(axis=1))
