"""What gradients through T steps cost: memory and time of one fine-tuning step, with and without rematerialisation.

    python benchmarks/remat.py [--model cifar10_resnet20] [--num_steps 8] [--batch 64]

One ``jaxsnn.finetune``-style step (the cross-entropy of the T-step readout, ``jax.value_and_grad`` through
``jaxsnn.simulate`` with a sigmoid surrogate, every variable a parameter) on a committed checkpoint, converted by the
paper's recipe from 512 training images, on one batch of test images: XLA's own account of the compiled step's
temporary memory (``memory_analysis().temp_size_in_bytes``), and the median time of ``--repeats`` calls after
compiling, for ``remat=False`` (every step's activations kept for the backward pass) and ``remat=True``
(``jax.checkpoint`` per step: each step's activations recomputed). The forward simulation alone is timed beside them.
Time it on an idle machine. Writes ``benchmarks/results/remat_<model>_T<steps>.json``.
"""
import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxsnn  # noqa: E402
from jaxsnn import data, training  # noqa: E402
from timing import timed, write_json  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="cifar10_resnet20")
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=8,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  config, model, variables = training.load_trained(ROOT / "experiments/checkpoints" / args.model)
  spec = data.spec(config.dataset)
  apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
  train = data.load(config.dataset, "train[:512]")
  test = data.load(config.dataset, f"{spec.test_split}[:{args.batch}]")
  snn, _ = jaxsnn.recipes.paper(apply_fn, variables, data.batches(train, 128, train=False, mean=spec.mean,
                                                                   std=spec.std), check_examples=0)
  x = data.normalize(test.images, spec.mean, spec.std)
  y = jnp.asarray(test.labels)
  surrogate = jaxsnn.surrogates.sigmoid(2.0)

  def grad_step(remat):
    def loss(v):
      out = jaxsnn.simulate(snn.replace(variables=v), x, args.num_steps, surrogate=surrogate, remat=remat,
                            tallies=False).outputs[-1]
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return jax.jit(jax.value_and_grad(loss))

  forward = jax.jit(lambda v: jaxsnn.simulate(snn.replace(variables=v), x, args.num_steps, tallies=False).outputs)
  out = {"model": args.model, "steps": args.num_steps, "batch": args.batch, "devices": str(jax.devices()[0])}
  out["forward_s"] = timed(lambda: forward(variables), args.repeats)[1]
  for remat in (False, True):
    f = grad_step(remat)
    memory = f.lower(variables).compile().memory_analysis().temp_size_in_bytes
    seconds = timed(lambda: f(variables), args.repeats)[1]
    out[f"remat_{remat}"] = {"temp_bytes": int(memory), "step_s": seconds}
    print(f"remat={remat}: {memory / 2**20:,.0f} MiB of temporaries, {seconds:.2f} s per step "
          f"(forward alone {out['forward_s']:.2f} s)", flush=True)
  path = args.out or str(ROOT / f"benchmarks/results/remat_{args.model}_T{args.num_steps}.json")
  write_json(path, out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
