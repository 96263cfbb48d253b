"""The one batch protocol: every function that streams data reads every form, masks mask, missing labels and
ambiguous input are errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsnn
from jaxsnn._src import batches as protocol
from conftest import Tiny

X = jnp.asarray(np.random.default_rng(3).normal(size=(12, 6)), jnp.float32)
GARBAGE = jnp.full((4, 6), 1e3, jnp.float32)  # padding rows that would dominate any statistic they entered


@functools.cache
def tiny():
  model = Tiny()
  variables = model.init(jax.random.key(0), X)
  labels = np.asarray(model.apply(variables, X)).argmax(-1).astype(np.int32)
  return model.apply, variables, labels


def forms(x, labels, mask=None):
  """The same batch in every form of the protocol (the masked ones carry the garbage padding rows)."""
  out = {"array": x, "tuple1": (x,), "tuple2": (x, labels), "dict": {"image": x, "label": labels}}
  if mask is not None:
    out = {"tuple3": (x, labels, mask), "dict_mask": {"image": x, "label": labels, "mask": mask},
           "tuple3_no_labels": (x, None, mask)}
  return out


def padded(fill=GARBAGE):
  """X with 4 rows of ``fill`` appended and masked out."""
  _, _, labels = tiny()
  x = jnp.concatenate([X, fill])
  y = np.concatenate([labels, np.zeros(4, np.int32)])
  return x, y, np.arange(16) < 12


STREAMING = ("calibrate", "ratio_histograms", "calibrate_snn", "choose_readout_delay", "tune_snn", "agreement",
             "recipes.low_latency", "authors_protocol.thresholds")


def run(name, batches):
  """One streaming function on ``batches``; returns what it computed, as comparable arrays."""
  apply_fn, variables, _ = tiny()
  stats = jaxsnn.calibrate(apply_fn, variables, [X])
  snn = jaxsnn.convert(apply_fn, variables, X, jaxsnn.thresholds(stats), initial_potential=0.5)
  if name == "calibrate":
    return jaxsnn.calibrate(apply_fn, variables, batches).max
  if name == "ratio_histograms":
    return jaxsnn.ratio_histograms(apply_fn, variables, batches, stats).counts
  if name == "calibrate_snn":
    return jaxsnn.calibrate_snn(snn, batches, 4)[0].initial_potential
  if name == "choose_readout_delay":
    return jaxsnn.choose_readout_delay(snn, batches, 4)[1].details["agreement"]
  if name == "tune_snn":
    return jaxsnn.tune_snn(snn, batches, 4, iterations=2)[0].thresholds
  if name == "agreement":
    return jaxsnn.agreement(snn, batches, 4)
  if name == "recipes.low_latency":
    return jaxsnn.recipes.low_latency(apply_fn, variables, batches, 4)[0].thresholds
  if name == "authors_protocol.thresholds":
    return jaxsnn.authors_protocol.thresholds(apply_fn, variables, batches)
  raise AssertionError(name)


def assert_same(a, b):
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


@pytest.mark.parametrize("name", STREAMING)
def test_every_streaming_function_reads_every_form_and_a_mask_really_masks(name):
  _, _, labels = tiny()
  want = run(name, [X])
  for form, batch in forms(X, labels).items():
    assert_same(run(name, [batch]), want), form
  if name == "authors_protocol.thresholds":
    return  # one threshold per batch slot: the protocol takes unpadded batches of one size (tested below)
  # Masked rows change nothing. The streaming functions compute in micro-batches of one fixed shape made of the real
  # examples only, so a padded, masked batch gives exactly what the bare batch gives; tune_snn takes its gradient
  # steps on the caller's batches as given (their shape is part of the optimisation), so there garbage in the padding
  # gives what zeros there give.
  x, y, mask = padded()
  reference = run(name, [padded(jnp.zeros_like(GARBAGE))]) if name == "tune_snn" else want
  for form, batch in forms(x, y, mask).items():
    assert_same(run(name, [batch]), reference), form

  # An iterator of batches, read once.
  assert_same(run(name, iter([X])), want)


def test_authors_protocol_rejects_padded_batches():
  apply_fn, variables, _ = tiny()
  x, y, mask = padded()
  with pytest.raises(ValueError, match="one threshold per batch slot"):
    jaxsnn.authors_protocol.thresholds(apply_fn, variables, [(X[:4],), (x, y, mask)])


@pytest.mark.parametrize("form", ["tuple2", "dict", "tuple3", "dict_mask"])
def test_evaluate_reads_every_labelled_form_and_counts_only_unmasked_examples(form):
  apply_fn, variables, labels = tiny()
  snn = jaxsnn.convert(apply_fn, variables, X, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [X])))
  want = jaxsnn.evaluate(snn, [(X, labels)], 16)
  x, y, mask = padded()
  batch = {**forms(X, labels), **forms(x, y, mask)}[form]
  got = jaxsnn.evaluate(snn, [batch], 16)
  assert got.count == 12
  np.testing.assert_array_equal(got.correct, want.correct)
  # A wrong label on a masked row changes nothing; on a real row it does.
  if form in ("tuple3", "dict_mask"):
    flipped = y.copy()
    flipped[0] = (flipped[0] + 1) % 3
    assert jaxsnn.evaluate(snn, [(x, flipped, mask)], 16).correct[-1] == want.correct[-1] - 1
    flipped = y.copy()
    flipped[-1] = (flipped[-1] + 1) % 3
    assert jaxsnn.evaluate(snn, [(x, flipped, mask)], 16).correct[-1] == want.correct[-1]


def test_a_mask_is_never_read_as_labels_and_functions_that_need_labels_say_so():
  apply_fn, variables, _ = tiny()
  snn = jaxsnn.convert(apply_fn, variables, X, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, variables, [X])))
  with pytest.raises(ValueError, match="labels are booleans: a mask where labels belong"):
    jaxsnn.evaluate(snn, [(X, np.ones(12, bool))], 8)
  with pytest.raises(ValueError, match="labels are booleans"):
    jaxsnn.calibrate(apply_fn, variables, [(X, np.ones(12, bool))])
  for unlabelled in (X, (X,), {"image": X}, (X, None, np.ones(12, bool))):
    with pytest.raises(ValueError, match="accuracy needs labels, but a batch has none"):
      jaxsnn.evaluate(snn, [unlabelled], 8)


def test_ambiguous_or_malformed_input_is_an_error_that_says_what_to_pass():
  apply_fn, variables, labels = tiny()
  call = functools.partial(jaxsnn.calibrate, apply_fn, variables)
  with pytest.raises(ValueError, match=r"but got an array of shape \(12, 6\)"):
    call(np.asarray(X))
  with pytest.raises(ValueError, match="but got a dict with keys"):
    call({"image": X, "label": labels})
  with pytest.raises(ValueError, match=r"is one batch .* pass \[\(x, labels\)\]"):
    call((np.asarray(X), labels))
  with pytest.raises(ValueError, match="needs the input under 'image'.*input_key"):
    call([{"pixels": X}])
  np.testing.assert_array_equal(call([{"pixels": X}], input_key="pixels").max["output"],
                                call([X]).max["output"])
  with pytest.raises(ValueError, match="1 to 3 elements"):
    call([(X, labels, np.ones(12, bool), 0)])
  with pytest.raises(ValueError, match="labels must be integer class indices"):
    call([(X, np.zeros(12, np.float32))])
  with pytest.raises(ValueError, match="do not match the batch of 12"):
    call([(X, labels[:5])])
  with pytest.raises(ValueError, match="a mask must be a boolean array"):
    call([(X, labels, np.ones(12, np.int32))])
  with pytest.raises(ValueError, match="batches is empty"):
    call([])
  with pytest.raises(ValueError, match="cannot read a batch from a list"):
    call([[X, labels]])


def test_one_hot_labels_and_pytree_inputs():
  one_hot = np.eye(3, dtype=np.float32)[[0, 2, 1]]
  assert protocol.as_batch((X[:3], one_hot), "t").labels.tolist() == [0, 2, 1]
  with pytest.raises(ValueError, match="not one-hot"):
    protocol.as_batch((X[:3], one_hot * 2), "t")
  # A two-input network: its inputs are a pytree in the first position (or under the dict's input key).
  apply_fn = lambda v, x: jax.nn.relu(x["a"] @ v[0] + x["b"] @ v[1]) @ v[2]  # noqa: E731
  rng = np.random.default_rng(0)
  v = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((6, 5), (2, 5), (5, 3))]
  x = {"a": X, "b": jnp.asarray(rng.normal(size=(12, 2)), jnp.float32)}
  a = jaxsnn.calibrate(apply_fn, v, [(x,)]).max
  b = jaxsnn.calibrate(apply_fn, v, [{"image": x}]).max
  assert_same(a, b)
  with pytest.raises(ValueError, match="different batch sizes"):
    protocol.as_batch(({"a": X, "b": X[:3]},), "t")


def test_take_cuts_the_first_real_examples_into_batches():
  x, y, mask = padded()
  got = protocol.take([(x, y, mask), (X, y[:12])], 20, 8, "t")
  assert [b.size for b in got] == [8, 8, 4]
  np.testing.assert_array_equal(np.concatenate([b.x for b in got]), np.concatenate([X, X[:8]]))
  assert all(b.mask.all() for b in got)
