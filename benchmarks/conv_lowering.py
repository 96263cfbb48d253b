"""Does XLA:CPU run the simulator's per-step convolutions faster as im2col + one matmul, or on ternary spikes in a
narrower type? A micro-benchmark on the convolution shapes of the CIFAR-10 nets.

    python benchmarks/conv_lowering.py [--batch 128]

For each shape: ``lax.conv_general_dilated`` in float32 (what the simulator runs), the same as im2col + matmul
(``jaxsnn.models.im2col``, shared by training and the simulator), and the convolution with bfloat16 operands (spikes
are +-θ or 0 per channel: exact in bfloat16 when θ is; accumulation in float32). Inputs are spike-like: 8 % non-zero; the
convolution is also timed on inputs of other densities (``--densities``: does the kernel gain from zeros?). Compile
first, then the median of repeats; time it on an idle machine.
"""
import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from jaxsnn.models import im2col as patches  # noqa: E402  (the patches of training and the simulator)
from timing import timed, write_json  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# (H, W, C_in, C_out, stride) of ResNet-20's and VGG16 w0.25's convolutions.
SHAPES = [(32, 32, 16, 16, 1), (16, 16, 32, 32, 1), (8, 8, 64, 64, 1), (32, 32, 3, 16, 1), (16, 16, 16, 32, 2),
          (32, 32, 16, 16, 1), (16, 16, 32, 32, 1), (8, 8, 64, 64, 1), (4, 4, 128, 128, 1), (2, 2, 128, 128, 1)]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/conv_lowering.json"))
  parser.add_argument("--densities", default="0,0.08,1", help="input densities the convolution is also timed at")
  args = parser.parse_args()
  args.densities = [float(d) for d in args.densities.split(",")]
  rows = []
  for h, w, cin, cout, stride in sorted(set(SHAPES)):
    key = jax.random.key(h * 1000 + cin)
    x = (jax.random.uniform(key, (args.batch, h, w, cin)) < 0.08).astype(jnp.float32)
    k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
    out_hw = (-(-h // stride), -(-w // stride))

    conv = jax.jit(lambda x, k: lax.conv_general_dilated(x, k, (stride, stride), ((1, 1), (1, 1)),
                                                         dimension_numbers=NHWC))
    im2col = jax.jit(lambda x, k: (patches(x, (3, 3), (stride, stride), ((1, 1), (1, 1)), (1, 1), out_hw)
                                   .reshape(-1, 9 * cin) @ k.reshape(9 * cin, cout)).reshape(x.shape[0], *out_hw, cout))
    bf16 = jax.jit(lambda x, k: lax.conv_general_dilated(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                                         (stride, stride), ((1, 1), (1, 1)), dimension_numbers=NHWC,
                                                         preferred_element_type=jnp.float32))
    row = {"shape": [h, w, cin, cout, stride]}
    for name, f in (("conv", conv), ("im2col", im2col), ("bf16", bf16)):
      _, t = timed(lambda: f(x, k), args.repeats)
      row[name] = t
    # Do XLA's kernels gain anything from zeros? The same convolution on inputs of other densities (0: no spike).
    row["conv_by_density"] = {}
    for density in args.densities:
      xd = (jax.random.uniform(key, x.shape) < density).astype(jnp.float32)
      row["conv_by_density"][str(density)] = timed(lambda: conv(xd, k), args.repeats)[1]
    rows.append(row)
    print(f"{h}x{w}x{cin}->{cout}/s{stride}: conv {row['conv'] * 1e3:.2f} ms, im2col {row['im2col'] * 1e3:.2f} ms "
          f"({row['conv'] / row['im2col']:.2f}x), bf16 {row['bf16'] * 1e3:.2f} ms "
          f"({row['conv'] / row['bf16']:.2f}x); conv by input density: "
          + ", ".join(f"{d}: {t * 1e3:.2f} ms" for d, t in row["conv_by_density"].items()), flush=True)
  write_json(args.out, {"batch": args.batch, "rows": rows})


if __name__ == "__main__":
  main()
