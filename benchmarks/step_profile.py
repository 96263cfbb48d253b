"""Where one simulation step's time goes: the contractions (the ANN pass) against the neuron updates alone.

    python benchmarks/step_profile.py [--model resnet20] [--num_steps 32] [--batch 128]     # jaxsnn's default kernels
    JAXSNN_FAST_CPU=0 python benchmarks/step_profile.py ...                              # XLA's own kernels

Timings on one batch (compile first, then the median of ``--repeats``; time it on an idle machine):

* the ANN pass (``jit(apply_fn)``): the convolutions with their BatchNorm + ReLU epilogues;
* one SNN step (``jaxsnn.simulate`` over ``--num_steps`` steps, divided by the steps), as accuracy runs simulate
  (``tallies=False``, the default of ``jaxsnn.evaluate``) and with the per-neuron spike tallies (rates, energy);
* the neuron updates alone: every site's SNM state (potential and memory as ``simulate`` carries them) stepped
  ``--num_steps`` times on a constant current, the spikes kept in the carry as the next layer would read them — no
  contraction at all.

If step ≈ contractions + updates, the updates' memory traffic is the part of a step an ANN pass does not pay.
"""
import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jaxsnn.xla  # noqa: E402

jaxsnn.xla.use_fast_cpu_kernels()  # jaxsnn's defaults, before JAX starts (JAXSNN_FAST_CPU=0 to opt out)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxsnn  # noqa: E402
from scaling import SHAPES, random_setup  # noqa: E402
from timing import timed, write_json  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20", choices=sorted(SHAPES))
  parser.add_argument("--num_steps", "--steps", dest="num_steps", type=int, default=32,
                      help="time steps T (--steps: the old spelling)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/step_profile_<model>.json)")
  args = parser.parse_args()

  apply_fn, variables, x, snn = random_setup(args.model, args.batch)
  neuron = snn.neuron
  cdt = jnp.int8 if args.num_steps <= 127 else jnp.int16 if args.num_steps <= 32767 else jnp.int32  # as simulate
  shapes = {name: (args.batch,) + tuple(s.shape) for name, s in snn.thresholds.items()}
  ths = {name: jnp.broadcast_to(snn.thresholds[name], shape) for name, shape in shapes.items()}
  currents = {name: jax.random.uniform(jax.random.key(i), shape) * ths[name] * 0.3
              for i, (name, shape) in enumerate(shapes.items())}

  @jax.jit
  def updates_only(currents):
    def init(shape):
      state = neuron.init(shape, jnp.float32)
      return state._replace(**{f: getattr(state, f).astype(cdt) for f in neuron.counters})

    carry = {k: (init(s), jnp.zeros(s, jnp.float32)) for k, s in shapes.items()}

    def step(carry, _):
      new = {}
      for k, (state, _) in carry.items():
        new[k] = neuron.step(ths[k], state, currents[k])
      return new, None

    return jax.lax.scan(step, carry, None, length=args.num_steps)[0]

  ann = jax.jit(apply_fn)
  sim = jax.jit(lambda s, x: jaxsnn.simulate(s, x, args.num_steps, tallies=False).outputs)
  sim_tallies = jax.jit(lambda s, x: jaxsnn.simulate(s, x, args.num_steps, tallies=True))
  ann_s = timed(lambda: ann(variables, x), args.repeats)[1]
  step_s = timed(lambda: sim(snn, x), args.repeats)[1] / args.num_steps
  tallies_s = timed(lambda: sim_tallies(snn, x), args.repeats)[1] / args.num_steps
  upd_s = timed(lambda: updates_only(currents), args.repeats)[1] / args.num_steps
  neurons = sum(int(jnp.prod(jnp.asarray(s))) for s in shapes.values())
  flags = os.environ.get("XLA_FLAGS", "")
  out = {"model": args.model, "batch": args.batch, "steps": args.num_steps, "neurons_per_batch": neurons,
         "xla_flags": flags, "ann_pass_s": ann_s, "snn_step_s": step_s, "snn_step_with_tallies_s": tallies_s,
         "neuron_updates_s": upd_s}
  suffix = "" if flags else "_xla_own_kernels"
  path = args.out or str(ROOT / f"benchmarks/results/step_profile_{args.model}{suffix}.json")
  write_json(path, out)
  print(f"| model | XLA_FLAGS | neurons per batch | ANN pass ms | SNN step ms (tallies) | step / ANN pass | "
        f"neuron updates alone ms | ANN + updates ms |\n|---|---|---|---|---|---|---|---|\n| {args.model} | "
        f"{flags or '(none)'} | {neurons / 1e6:.1f} M | {ann_s * 1e3:.1f} | {step_s * 1e3:.1f} ({tallies_s * 1e3:.1f}) | "
        f"{step_s / ann_s:.2f} | {upd_s * 1e3:.1f} | {(ann_s + upd_s) * 1e3:.1f} |\n\nwrote {path}")


if __name__ == "__main__":
  main()
