"""jaxsnn.save / jaxsnn.load and the one file format (jaxsnn._src.files): a saved network loads in a fresh process
that has none of the model's code and simulates bit for bit the same; bad files are clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

import jaxsnn
from jaxsnn import models
from jaxsnn._src import files, ir
from conftest import ROOT, randomise_batch_stats
from serialization_check import runs

T, BLOCK = 6, 3


class ResCNN(nn.Module):
  """A small Flax CNN: conv + BatchNorm, a residual block, max pooling, a dense head."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
    y = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
    x = nn.relu(x + nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(y)))
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


class QCFSNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    act = models.qcfs_activation(4, 2.0)
    x = act(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x)))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(3)(act(nn.Dense(8)(x.reshape(x.shape[0], -1))))


class EqxCNN(eqx.Module):
  """A list of layers and bare functions (Equinox's MNIST example, small), ending in log_softmax."""

  layers: list

  def __init__(self, key):
    k1, k2, k3 = jax.random.split(key, 3)
    self.layers = [eqx.nn.Conv2d(1, 3, kernel_size=3, key=k1), eqx.nn.MaxPool2d(kernel_size=2), jax.nn.relu,
                   jnp.ravel, eqx.nn.Linear(75, 8, key=k2), jax.nn.relu, eqx.nn.Linear(8, 3, key=k3),
                   jax.nn.log_softmax]

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


def flax_low_latency():
  x = jax.random.normal(jax.random.key(0), (12, 6, 6, 2))
  model = ResCNN()
  variables = randomise_batch_stats(model.init(jax.random.key(1), x), np.random.default_rng(0))
  snn, _ = jaxsnn.recipes.low_latency(model.apply, variables, [x[:6], x[6:]], T, snn_calibration_examples=12,
                                      delay_examples=12, check_examples=0)
  return snn, x


def equinox_net():
  x = jax.random.normal(jax.random.key(2), (12, 1, 8, 8))
  model = EqxCNN(jax.random.key(3))
  apply_fn = lambda m, xb: jax.vmap(m)(xb)  # noqa: E731
  stats = jaxsnn.calibrate(apply_fn, model, [x])
  return jaxsnn.convert(apply_fn, model, x, jaxsnn.thresholds(stats), initial_potential=0.5), x


def qcfs_net(recipe: bool = True):
  x = jax.random.normal(jax.random.key(4), (12, 6, 6, 2))
  model = QCFSNet()
  variables = randomise_batch_stats(model.init(jax.random.key(5), x), np.random.default_rng(1))
  if not recipe:
    return jaxsnn.convert(model.apply, variables, x), x
  snn, _ = jaxsnn.recipes.quantized(model.apply, variables, [x], T, snn_calibration_examples=12,
                                    delay_examples=12, check_examples=0)
  return snn, x


def flax_converted():
  """The Flax CNN converted directly, with every per-neuron array made non-trivial by hand (no recipe: fast)."""
  x = jax.random.normal(jax.random.key(0), (12, 6, 6, 2))
  model = ResCNN()
  variables = randomise_batch_stats(model.init(jax.random.key(1), x), np.random.default_rng(0))
  snn = jaxsnn.convert(model.apply, variables, x, jaxsnn.thresholds(jaxsnn.calibrate(model.apply, variables, [x])),
                       initial_potential=0.5, readout_delay=2)
  rng = np.random.default_rng(2)
  return snn.replace(offsets={k: rng.normal(0, 0.05, v.shape).astype(v.dtype) for k, v in snn.offsets.items()}), x


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """``(folder, {name: (snn, x)})``: three converted networks, each saved to ``<folder>/<name>.jaxsnn``."""
  folder = tmp_path_factory.mktemp("saved")
  nets = {"flax": flax_converted(), "equinox": equinox_net(), "qcfs": qcfs_net(recipe=False)}
  for name, (snn, _) in nets.items():
    jaxsnn.save(folder / f"{name}.jaxsnn", snn)
  return folder, nets


def test_saved_networks_simulate_bit_for_bit_the_same_in_a_fresh_process_without_their_code(tmp_path):
  nets = {"flax_low_latency": flax_low_latency(), "equinox": equinox_net(), "qcfs": qcfs_net()}
  expected = {}
  for name, (snn, x) in nets.items():
    jaxsnn.save(tmp_path / f"{name}.jaxsnn", snn)
    np.save(tmp_path / f"{name}.x.npy", np.asarray(x))
    expected[name] = runs(snn, x, T, BLOCK)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, str(ROOT / "tests" / "serialization_check.py"), str(tmp_path), str(T),
                         str(BLOCK), *nets], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name, want in expected.items():
    with np.load(tmp_path / f"{name}.loaded.npz") as got:
      assert sorted(got.files) == sorted(want)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}: {k}")
        assert got[k].dtype == want[k].dtype
    assert any(want[k].any() for k in want if "/pos/" in k)  # the networks do spike
  snn = nets["flax_low_latency"][0]  # the recipe's per-neuron potentials (from its SNN calibration) were saved too
  assert snn.max_sites and any(bool((v != 0.5).any()) for v in snn.initial_potential.values())


def test_a_loaded_network_is_the_same_program_with_the_same_data(saved):
  folder, nets = saved
  for name, (snn, x) in nets.items():
    loaded = jaxsnn.load(folder / f"{name}.jaxsnn")
    assert loaded.traced == snn.traced  # same key: every compiled cache treats it as the original
    # ... and the program traced from the rebuilt apply_fn is the original's, at any batch size.
    for n in (1, 4, 12):
      assert (ir.build_program(loaded.apply_fn, loaded.variables, x[:n]).key
              == ir.build_program(snn.apply_fn, snn.variables, x[:n]).key), (name, n)
    for field in ("readout", "input_spec", "site_shapes", "site_kinds", "max_sites", "output_shape", "state_dtype",
                  "fold", "dropped_final"):
      assert getattr(loaded, field) == getattr(snn, field), field
    assert loaded.neuron is snn.neuron
    for field in ("thresholds", "initial_potential", "offsets"):
      got, want = getattr(loaded, field), getattr(snn, field)
      assert list(got) == list(want)  # network order
      for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])
    assert int(loaded.readout_delay) == int(snn.readout_delay) and loaded.readout_delay.dtype == jnp.int32
    leaves = jax.tree_util.tree_leaves_with_path(loaded.variables)
    original = jax.tree_util.tree_leaves_with_path(snn.variables)
    assert [jax.tree_util.keystr(p) for p, _ in leaves] == [jax.tree_util.keystr(p) for p, _ in original]
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(leaves, original))
    np.testing.assert_array_equal(loaded.apply_fn(loaded.variables, x), logits(snn, x))
    np.testing.assert_array_equal(jaxsnn.simulate(loaded, x, 3).outputs, jaxsnn.simulate(snn, x, 3).outputs)
  assert nets["equinox"][0].dropped_final == ("log_softmax",)
  assert isinstance(jaxsnn.load(folder / "equinox.jaxsnn").variables, jaxsnn.files.Node)
  assert {k for _, k, _ in nets["qcfs"][0].site_kinds} == {"qcfs"} and nets["flax"][0].max_sites


def logits(snn, x):
  """The ANN's logits (the program's output: a dropped final softmax left out)."""
  return ir.site_values(ir.build_program(snn.apply_fn, snn.variables, x), snn.variables, x)[1]


def test_a_loaded_network_takes_new_data_like_the_original(saved):
  folder, nets = saved
  snn, x = nets["flax"]
  loaded = jaxsnn.load(folder / "flax.jaxsnn")
  halved = loaded.replace(thresholds={k: v / 2 for k, v in loaded.thresholds.items()}, readout_delay=0)
  want = jaxsnn.simulate(snn.replace(thresholds={k: v / 2 for k, v in snn.thresholds.items()}, readout_delay=0), x, T)
  np.testing.assert_array_equal(jaxsnn.simulate(halved, x, T).outputs, want.outputs)


# ---- bad files --------------------------------------------------------------------------------------------------

def rewrite(src, dst, change):
  """Copies the zip ``src`` to ``dst`` with ``change(name, bytes) -> bytes`` applied to every member."""
  with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
    for name in z.namelist():
      out.writestr(name, change(name, z.read(name)))


def header_change(f):
  def change(name, data):
    if name != files.HEADER:
      return data
    header = json.loads(data)
    f(header)
    return json.dumps(header).encode()
  return change


def test_bad_files_are_clear_errors_that_say_what_differs(saved, tmp_path):
  folder, _ = saved
  good = folder / "flax.jaxsnn"
  data = good.read_bytes()
  (tmp_path / "truncated.jaxsnn").write_bytes(data[: len(data) // 2])
  with pytest.raises(files.FormatError, match=r"jaxsnn.load: .*truncated.jaxsnn' is truncated or corrupted"):
    jaxsnn.load(tmp_path / "truncated.jaxsnn")
  (tmp_path / "text.jaxsnn").write_text("hello")
  with pytest.raises(files.FormatError, match=r"is not a jaxsnn file \(not a zip archive\)"):
    jaxsnn.load(tmp_path / "text.jaxsnn")
  np.savez(tmp_path / "plain.npz", a=np.ones(3))
  with pytest.raises(files.FormatError, match=r"is not a jaxsnn file: it has no jaxsnn.json"):
    jaxsnn.load(tmp_path / "plain.npz")

  def version(header):
    header["version"] = files.VERSION + 1
    header["writer"]["jaxsnn"] = "9.9"
  rewrite(good, tmp_path / "newer.jaxsnn", header_change(version))
  with pytest.raises(files.FormatError, match=rf"is jaxsnn file format version {files.VERSION + 1} \(written by "
                     rf"jaxsnn 9.9\); this jaxsnn \(.*\) reads version {files.VERSION}: update jaxsnn"):
    jaxsnn.load(tmp_path / "newer.jaxsnn")

  stats_file = tmp_path / "stats.jaxsnn"
  jaxsnn.save_stats(stats_file, jaxsnn.Stats(max={"a": jnp.ones(2)}, num_samples=3))
  with pytest.raises(files.FormatError, match=r"holds calibration statistics, not a converted network \(read it "
                     r"with jaxsnn.load_stats\)"):
    jaxsnn.load(stats_file)
  with pytest.raises(files.FormatError, match=r"jaxsnn.load_thresholds: .* holds a converted network, not "
                     r"thresholds \(read it with jaxsnn.load\)"):
    jaxsnn.load_thresholds(good)

  # An array altered after writing (the .npy rewritten whole, so the zip's own CRC holds): named by its path.
  header = json.loads(zipfile.ZipFile(good).read(files.HEADER))
  index = next(i for i, row in enumerate(header["arrays"]) if row["path"].startswith("thresholds/"))

  def tamper(name, member):
    if name != f"arrays/{index}.npy":
      return member
    import io
    a = np.load(io.BytesIO(member))
    buf = io.BytesIO()
    np.save(buf, a * 2)
    return buf.getvalue()
  rewrite(good, tmp_path / "tampered.jaxsnn", tamper)
  path = header["arrays"][index]["path"]
  with pytest.raises(files.FormatError, match=rf"was altered after it was written: the array at {path} .* does not "
                     "match its fingerprint"):
    jaxsnn.load(tmp_path / "tampered.jaxsnn")
  # A header edited by hand (a threshold's site renamed) no longer matches the header's fingerprint.
  rewrite(good, tmp_path / "edited.jaxsnn", header_change(lambda h: h.__setitem__("kind", "network ")))
  with pytest.raises(files.FormatError, match="its header does not match its fingerprint"):
    jaxsnn.load(tmp_path / "edited.jaxsnn")
  # Bytes flipped inside an array: the zip's CRC catches it.
  raw = bytearray(data)
  start = raw.find(b"arrays/3.npy") + 200
  raw[start:start + 8] = bytes(8)
  (tmp_path / "flipped.jaxsnn").write_bytes(bytes(raw))
  with pytest.raises(files.FormatError, match="is corrupted|was altered"):
    jaxsnn.load(tmp_path / "flipped.jaxsnn")
  with pytest.raises(FileNotFoundError):
    jaxsnn.load(tmp_path / "missing.jaxsnn")


# ---- what cannot be saved ---------------------------------------------------------------------------------------

def test_what_the_format_cannot_hold_is_refused_by_name(tmp_path):
  x = jnp.ones((4, 3))
  w = {"w": jnp.ones((3, 5)), "u": jnp.ones((5, 2))}
  th = {"relu": jnp.ones(5)}
  double_p = jcore.Primitive("my_double")
  double_p.def_impl(lambda a: 2 * a)
  double_p.def_abstract_eval(lambda a: jax.core.ShapedArray(a.shape, a.dtype))
  snn = jaxsnn.convert(lambda v, xb: jax.nn.relu(double_p.bind(xb) @ v["w"]) @ v["u"], w, x, th)
  with pytest.raises(ValueError, match=r"jaxsnn.save: cannot save the network's program: primitive 'my_double' "
                     r"\(.*Primitive\) is not one of JAX's own"):
    jaxsnn.save(tmp_path / "custom.jaxsnn", snn)

  def by_batch(v, xb):  # its program depends on the batch size
    if xb.shape[0] > 2:
      xb = xb * 2
    return jax.nn.relu(xb @ v["w"]) @ v["u"]
  snn = jaxsnn.convert(by_batch, w, x, th)
  with pytest.raises(ValueError, match=r"jaxsnn.save: cannot save the network's program: it depends on the batch "
                     r"size beyond its dimensions \(at batch sizes 2 and 3: 3 ops against 4\)"):
    jaxsnn.save(tmp_path / "batch.jaxsnn", snn)
  assert not list(tmp_path.iterdir())  # nothing written, not even half a file

  mine = jaxsnn.Neuron(init=jaxsnn.IF().init, step=jaxsnn.IF().step, name="MyIF")
  snn = jaxsnn.convert(lambda v, xb: jax.nn.relu(xb @ v["w"]) @ v["u"], w, x, th, neuron=mine)
  jaxsnn.save(tmp_path / "mine.jaxsnn", snn)
  with pytest.raises(ValueError, match=r"jaxsnn.load: the network was saved with a neuron of your own, 'MyIF'"):
    jaxsnn.load(tmp_path / "mine.jaxsnn")
  loaded = jaxsnn.load(tmp_path / "mine.jaxsnn", neuron=mine)
  np.testing.assert_array_equal(jaxsnn.simulate(loaded, x, 4).outputs, jaxsnn.simulate(snn, x, 4).outputs)


def test_scatter_gather_and_a_dict_input_round_trip(tmp_path):
  idx = jnp.array([0, 2, 3])

  def apply_fn(v, inputs):
    h = jax.nn.relu(inputs["a"] @ v["w"])
    h = jnp.zeros((h.shape[0], 6), h.dtype).at[:, idx].add(h[:, jnp.array([1, 0, 2])])
    return jax.nn.relu(h) @ v["u"] + inputs["b"][:, :1]
  x = {"a": jax.random.normal(jax.random.key(0), (5, 4)), "b": jnp.ones((5, 2), jnp.float32)}
  w = {"w": jax.random.normal(jax.random.key(1), (4, 3)), "u": jax.random.normal(jax.random.key(2), (6, 2))}
  snn = jaxsnn.convert(apply_fn, w, x, jaxsnn.thresholds(jaxsnn.calibrate(apply_fn, w, [(x, np.zeros(5, int))])))
  jaxsnn.save(tmp_path / "s.jaxsnn", snn)
  loaded = jaxsnn.load(tmp_path / "s.jaxsnn")
  assert loaded.traced == snn.traced and loaded.input_spec == snn.input_spec
  for block in (None, 2):
    np.testing.assert_array_equal(jaxsnn.simulate(loaded, x, 5, block_size=block).outputs,
                                  jaxsnn.simulate(snn, x, 5, block_size=block).outputs)


# ---- every artifact in the one format -------------------------------------------------------------------------

def test_stats_thresholds_and_checkpoints_are_jaxsnn_files_and_old_npz_files_still_read(tmp_path):
  stats = jaxsnn.Stats(max={"s/relu": jnp.arange(3.0), "output": jnp.ones(2)}, num_samples=7,
                       hist={"s/relu": np.arange(6, dtype=np.int64).reshape(3, 2)})
  jaxsnn.save_stats(tmp_path / "stats.jaxsnn", stats)
  jaxsnn.save_thresholds(tmp_path / "th.jaxsnn", {"s/relu": jnp.ones(3, jnp.bfloat16)})
  files.save_checkpoint(tmp_path / "ckpt.jaxsnn", "job-1", {"state": (np.ones(2), [1, 2.5, None, "x"]), "n": 3})
  for name, kind in (("stats", "stats"), ("th", "thresholds"), ("ckpt", "checkpoint")):
    info = jaxsnn.files.info(tmp_path / f"{name}.jaxsnn")
    assert info["kind"] == kind and info["version"] == files.VERSION
  th = jaxsnn.load_thresholds(tmp_path / "th.jaxsnn")
  assert th["s/relu"].dtype == jnp.bfloat16
  back = files.load_checkpoint(tmp_path / "ckpt.jaxsnn", "job-1", "test", "")
  assert back["n"] == 3 and back["state"][1] == [1, 2.5, None, "x"] and isinstance(back["state"], tuple)
  with pytest.raises(ValueError, match="test: the checkpoint .* belongs to another job"):
    files.load_checkpoint(tmp_path / "ckpt.jaxsnn", "job-2", "test", "")
  assert files.load_checkpoint(tmp_path / "none.jaxsnn", "job-1", "test", "") is None

  # The .npz formats before version 1.
  np.savez(tmp_path / "old_stats.npz", __format__=np.asarray("jaxsnn-stats-v1"), __num_samples__=np.int64(7),
           __hist_bits__=np.asarray(jaxsnn._src.calibrate.HIST_MANTISSA_BITS), **{"max:s/relu": np.arange(3.0)})
  old = jaxsnn.load_stats(tmp_path / "old_stats.npz")
  assert old.num_samples == 7 and np.array_equal(old.max["s/relu"], np.arange(3.0)) and old.hist is None
  np.savez(tmp_path / "old_th.npz", __format__=np.asarray("jaxsnn-stats-v1-thresholds"), **{"th:a": np.ones(2)})
  assert list(jaxsnn.load_thresholds(tmp_path / "old_th.npz")) == ["a"]
  np.savez(tmp_path / "old_ckpt.npz", __format__=np.asarray("jaxsnn-checkpoint-v2"),
           __fingerprint__=np.asarray("job-1"), __tree__=np.asarray(json.dumps({"dict": {"n": {"value": 3}}})))
  assert files.load_checkpoint(tmp_path / "old_ckpt.npz", "job-1", "test", "") == {"n": 3}
