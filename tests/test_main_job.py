"""experiments/main.py end to end on the committed Fashion-MNIST checkpoint (real data, prepared by scripts/test.sh):
a small run writes the results JSON and PNG, a second run reuses every method from the work dir, and --report_only
reports what is done and lists the rest as pending without running it."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["--run", "fashion_mnist_small_cnn", "--num_test", "200", "--calib_examples", "1000", "--batch_size", "100",
         "--num_steps", "16"]
# The committed run of SMALL with both methods (the command is in experiments/RESULTS.md, "Reproducing on another CPU"):
# a fresh run on any CPU must be within TOLERANCE images of it in every cell (README, "Results of the main job").
REFERENCE = ROOT / "experiments/results/main_check.json"
TOLERANCE = 2
PAPER, HALF = "SNM + NeuronNorm", "SNM + NeuronNorm + θ/2"


def main_py(*args, cwd):
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "main.py"), *SMALL, *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_main_runs_resumes_from_its_work_dir_and_reports_partial_results(tmp_path):
  work, out = tmp_path / "work", tmp_path / "out.json"
  main_py("--methods", PAPER, "--work", str(work), "--out", str(out), cwd=tmp_path)
  report = json.loads(out.read_text())
  assert report["test_images"] == 200 and "pending" not in report
  assert list(report["methods"]) == [PAPER] and len(report["methods"][PAPER]["accuracy"]) == 16
  assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
  first = report["methods"][PAPER]
  # The numbers are the library's: the paper's recipe from the first 1,000 training images, the first 200 test images.
  from jaxsnn import data, training
  import jaxsnn
  config, model, variables = training.load_trained(ROOT / "experiments/checkpoints/fashion_mnist_small_cnn")
  spec = data.spec(config.dataset)
  train = data.load(config.dataset, "train[:1000]")  # the training split's first images (validation is its end)
  test = data.load(config.dataset, "test[:200]")
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  snn, _ = jaxsnn.recipes.paper(apply_fn, variables, data.batches(train, 100, train=False, mean=spec.mean,
                                                                   std=spec.std))
  want = jaxsnn.evaluate(snn, data.batches(test, 100, train=False, mean=spec.mean, std=spec.std), 16)
  assert first["accuracy"] == want.accuracy.tolist()

  # Both methods asked for, report only: the done one comes from the work dir, the other is pending, none runs.
  stdout = main_py("--methods", f"{PAPER};{HALF}", "--work", str(work), "--out", str(out), "--report_only",
                   cwd=tmp_path)
  partial = json.loads(out.read_text())
  assert partial["methods"] == {PAPER: first} and partial["pending"] == [HALF]
  assert "pending (not run yet): 1 of 2" in stdout and "-- " not in stdout

  # Run both: the first is reused as it was (its seconds too), the second runs.
  stdout = main_py("--methods", f"{PAPER};{HALF}", "--work", str(work), "--out", str(out), cwd=tmp_path)
  both = json.loads(out.read_text())
  assert both["methods"][PAPER] == first and "pending" not in both
  assert len(both["methods"][HALF]["accuracy"]) == 16

  # What the README promises about other CPUs: every cell within TOLERANCE images of the committed run (on the kind of
  # machine that made it, bit for bit the same; XLA's kernels round differently elsewhere).
  reference = json.loads(REFERENCE.read_text())
  assert reference["test_images"] == both["test_images"] and set(reference["methods"]) == {PAPER, HALF}
  for name in (PAPER, HALF):
    got = [round(a * 200) for a in both["methods"][name]["accuracy"]]
    ref = [round(a * 200) for a in reference["methods"][name]["accuracy"]]
    assert max(abs(g - r) for g, r in zip(got, ref)) <= TOLERANCE, (name, got, ref)
