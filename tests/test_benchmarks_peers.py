"""The pure-Python pieces of benchmarks/peers.py and benchmarks/gpu.py: time to accuracy, recipe choice, tables.

No torch, no SpikingJelly, no simulation: made-up accuracy curves and a made-up peers.json.
"""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their folder's timing helper


def load_script(name):
  spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


peers = load_script("peers")


def test_first_reaching_is_the_smallest_T_at_or_above_the_target():
  acc = [0.1, 0.5, 0.895, 0.90, 0.89, 0.95]
  assert peers.first_reaching(acc, 0.90) == 4       # 1-based T; a later dip does not matter
  assert peers.first_reaching(acc, 0.10) == 1
  assert peers.first_reaching(acc, 0.96) is None
  assert peers.first_reaching([], 0.5) is None


def test_summarize_time_to_target_is_T_times_the_time_per_step_for_the_test_set():
  acc = [0.1] * 19 + [0.9] * 45                     # reaches 0.9 at T = 20, max_T = 64
  s = peers.summarize(acc, target=0.9, img_steps_per_s=1000.0)
  assert s["T_target"] == 20
  assert s["time_to_target_s"] == pytest.approx(10_000 * 20 / 1000.0)   # 10,000 test images x 20 steps
  assert s["max_T"] == 64
  assert s["acc_at"] == {"16": 0.1, "32": 0.9, "64": 0.9}
  short = peers.summarize(acc[:20], target=0.95, img_steps_per_s=1000.0, images=512)
  assert short["T_target"] is None and short["time_to_target_s"] is None
  assert short["acc_at"] == {"16": 0.1}             # columns beyond the run are left out
  assert peers.summarize(acc, 0.9, None)["time_to_target_s"] is None


def test_best_recipe_prefers_time_then_T_then_final_accuracy():
  r = {"a": {"time_to_target_s": 50.0, "T_target": 40, "accuracy": [0.9]},
       "b": {"time_to_target_s": 30.0, "T_target": 60, "accuracy": [0.8]},   # slower per step but fewer seconds
       "c": {"time_to_target_s": None, "T_target": None, "accuracy": [0.95]}}
  assert peers.best_recipe(r) == "b"
  no_time = {"a": {"time_to_target_s": None, "T_target": 30, "accuracy": [0.9]},
             "b": {"time_to_target_s": None, "T_target": 20, "accuracy": [0.9]}}
  assert peers.best_recipe(no_time) == "b"
  never = {"a": {"time_to_target_s": None, "T_target": None, "accuracy": [0.5, 0.7]},
           "b": {"time_to_target_s": None, "T_target": None, "accuracy": [0.6, 0.8]}}
  assert peers.best_recipe(never) == "b"


def made_up_results():
  def rec(label, ips, ratio, acc):
    return {"label": label, "img_steps_per_s": ips, "ratio_to_T_ann_passes": ratio, "accuracy": acc,
            **peers.summarize(acc, 0.90, ips)}
  jx = {"ann_images_per_s": 900.0, "recipes": {
      "paper": rec("SNM + NeuronNorm (paper)", 800.0, 1.1, [0.5] * 39 + [0.91] * 25),
      "low_latency": rec("fast", 800.0, 1.1, [0.5] * 9 + [0.91] * 55)}}
  # The chosen recipe's speed under every setting: each row of the speed table (the default is the recipe's own).
  jx["recipes"]["low_latency"]["settings"] = {
      "default": {"label": "defaults", "img_steps_per_s": 800.0, "ann_pass_s": 128 / 900.0,
                  "ratio_to_T_ann_passes": 1.1},
      "xla_own_kernels": {"label": "own kernels", "img_steps_per_s": 600.0, "ann_pass_s": 128 / 700.0,
                          "ratio_to_T_ann_passes": 1.3}}
  jx["best"] = peers.best_recipe(jx["recipes"])
  sj = {"ann_images_per_s": 1000.0, "recipes": {"max": rec("layer max", 900.0, 1.2, [0.1] * 64)}, "best": "max",
        "img_steps_per_s": 900.0}
  return {"resnet20": {"ann": {"flax_test_accuracy": 0.91, "torch_test_accuracy": 0.91}, "timing_T": 64,
                       "jaxsnn": jx, "spikingjelly": sj},
          "meta": {"machine": "2 CPU cores (test)", "versions": "jax x, torch y, spikingjelly z"}}


def test_render_table_from_a_made_up_json(tmp_path):
  results = made_up_results()
  path = tmp_path / "peers.json"
  peers.write_json(path, results)
  assert not list(tmp_path.glob("*.tmp"))           # atomic: the temporary file was renamed
  table = peers.render_table(json.loads(path.read_text()))
  lines = table.splitlines()
  assert "| resnet20 | jaxsnn | SNM + NeuronNorm (paper) | 800 | 900 | 1.10× | 0.89× |" in lines
  assert "| resnet20 | jaxsnn | fast (defaults) | 800 | 900 | 1.10× | 0.89× |" in lines
  assert "| resnet20 | jaxsnn | fast (own kernels) | 600 | 700 | 1.30× | 0.67× |" in lines
  assert "| resnet20 | spikingjelly | layer max | 900 | 1,000 | 1.20× |  |" in lines
  # paper: T = 40 -> 10,000 * 40 / 800 = 500 s; low_latency (best): T = 10 -> 125 s; SpikingJelly never gets there.
  assert "| resnet20 | jaxsnn | SNM + NeuronNorm (paper) | 91.00 | 50.00 | 50.00 | 91.00 | 40 | 500 s |" in lines
  assert "| resnet20 | jaxsnn | fast **(best)** | 91.00 | 91.00 | 91.00 | 91.00 | 10 | 125 s |" in lines
  assert "| resnet20 | spikingjelly | layer max **(best)** | 91.00 | 10.00 | 10.00 | 10.00 | > 64 | not reached |" \
      in lines
  assert lines[-1].startswith("Machine: 2 CPU cores (test)")
  for line in lines:                                 # every row has as many cells as its header
    if line.startswith("|"):
      assert line.count("|") in (8, 10)


def test_gpu_table_and_schedules():
  gpu = load_script("gpu")
  assert list(gpu.schedules([8])) == [("step-major", None, True), ("layer-major K=8", 8, True),
                                      ("layer-major K=8, exact=False", 8, False)]
  rows = [{"model": "vgg16", "T": 64, "schedule": "step-major", "first_s": 12.0, "median_s": 0.5,
           "img_steps_per_s": 32768.0, "ratio_to_T_ann_passes": 1.5, "speedup_vs_step_major": 1.0},
          {"model": "vgg16", "T": 64, "schedule": "layer-major K=8", "error": "XlaRuntimeError: out of memory"}]
  table = gpu.render(rows).splitlines()
  assert table[2] == "| vgg16 | 64 | step-major | 12.0 | 0.5000 | 32,768 | 1.50× | 1.00× |"
  assert "out of memory" in table[3]


def test_test_steps_after_validation():
  assert peers.test_steps(22, 512, 4.0) == 128      # 4 x 22 = 88 -> 128
  assert peers.test_steps(5, 512, 4.0) == 64        # at least the table's largest T
  assert peers.test_steps(200, 512, 4.0) == 512     # at most max_T
  assert peers.test_steps(None, 512, 4.0) == 512    # not reached on validation: all the way
  assert peers.test_steps(22, 512, 0) == 512        # factor 0: all the way
  assert peers.test_steps(32, 512, 4.0) == 128      # exact powers of two stay


def test_reusing_spikingjelly_curves_checks_the_earlier_run_and_keeps_no_speed(tmp_path, monkeypatch):
  """--reuse_spikingjelly: SpikingJelly's choice and test curves come back from an earlier peers.json only when the
  weights' torch ANN, the images, the versions and the validation size are the same; its speeds are never reused."""
  import types
  acc = [0.5] * 20 + [0.9] * 44
  prior = {"vgg16_w025": {
      "num_test": 100, "calib_images": 50, "checkpoint": peers.CHECKPOINTS["vgg16_w025"] + ".msgpack",
      "date": "2026-11-30T19:54:17", "ann": {"torch_test_accuracy": 0.88},
      "spikingjelly": {"ann_accuracy": 0.88, "torch": "2.13", "spikingjelly": "2.0.0", "python": "3.11",
                       "torch_threads": 2, "selection": {"images": 512, "chosen": "ltb+delay"},
                       "img_steps_per_s": 3000.0, "best": "ltb+delay",
                       "recipes": {"ltb": {"label": "ltb", "recipe": "ltb", "accuracy": acc, "img_steps_per_s": 3000.0,
                                           "snn_s": 1.0, "T_target": 21, "time_to_target_s": 7.0},
                                   "ltb+delay": {"label": "ltb, delay", "recipe": "ltb", "accuracy": acc,
                                                 "delay_start_raw": 3, "img_steps_per_s": 3000.0}}}}}
  path = tmp_path / "peers.json"
  path.write_text(json.dumps(prior))
  net = types.SimpleNamespace(name="vgg16_w025", arrays={"test_y": [0] * 100, "calib_x": [0] * 50})
  args = types.SimpleNamespace(select=512)
  monkeypatch.setattr(peers, "_torch_job", lambda net, args: {})
  torch_out = {"ann": {"test_accuracy": 0.88, "logit_max_abs_diff": 1e-6}, "versions": {"torch": "2.13",
                                                                                        "spikingjelly": "2.0.0"}}
  monkeypatch.setattr(peers, "run_torch", lambda job, name: torch_out)
  tann, sj, candidates = peers.spikingjelly_curves_from(path, net, args)
  assert candidates == ["ltb"] and sj["selection"]["chosen"] == "ltb+delay" and tann["test_accuracy"] == 0.88
  assert sj["recipes"]["ltb"]["accuracy"] == acc and sj["recipes"]["ltb+delay"]["delay_start_raw"] == 3
  assert not any(k in r for r in sj["recipes"].values() for k in ("img_steps_per_s", "snn_s", "time_to_target_s"))
  assert "img_steps_per_s" not in sj and sj["curves_from"]["date"] == "2026-11-30T19:54:17"
  # Anything that would make the curves another run's is refused, with what differs.
  for change in ({"ann": {"test_accuracy": 0.87}}, {"versions": {"torch": "2.14", "spikingjelly": "2.0.0"}}):
    monkeypatch.setattr(peers, "run_torch", lambda job, name, c=change: {**torch_out, **{
        k: {**torch_out[k], **v} for k, v in c.items()}})
    with pytest.raises(SystemExit, match="differs"):
      peers.spikingjelly_curves_from(path, net, args)
  monkeypatch.setattr(peers, "run_torch", lambda job, name: torch_out)
  with pytest.raises(SystemExit, match="select"):
    peers.spikingjelly_curves_from(path, net, types.SimpleNamespace(select=256))
  with pytest.raises(SystemExit, match="no entry for resnet20"):
    peers.spikingjelly_curves_from(path, types.SimpleNamespace(name="resnet20", arrays=net.arrays), args)


def test_few_steps_candidates_are_read_from_the_fewsteps_cache_with_their_cost_and_refused_when_missing(tmp_path,
                                                                                                      monkeypatch):
  # The preparation cost comes from the committed few-steps results: the chosen method's quantisation and stages.
  report = json.loads((ROOT / "experiments/results/fewsteps/cifar10_resnet20.json").read_text())
  prep = peers.few_steps_preparation("resnet20", 8)
  chosen = report["selection"]["chosen"]["8"]
  assert prep["method"] == chosen
  levels = report["methods"][chosen]["method"]["levels"]
  quantize = [v for k, v in report["timings_seconds"].items() if k.startswith(f"quantize L={levels}")]
  assert quantize and prep["seconds"] == pytest.approx(sum(quantize) + report["methods"][chosen]["prepare_seconds"])
  # A candidate whose saved network is missing stops with the command that makes it (never a silent skip).
  monkeypatch.setattr(peers, "ROOT", tmp_path)
  with pytest.raises(SystemExit, match="--save_networks 4,8,16,32"):
    peers.JAXSNN_RECIPES["few_steps_T4"].build("resnet20", None, None, [], None, None)
