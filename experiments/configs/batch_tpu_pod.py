"""A batch job for a TPU pod (or any multi-host cluster jax.distributed can read from the environment).

Start the same command on every host of the pod, e.g. with ``gcloud compute tpus tpu-vm ssh NAME --worker=all``:

    python experiments/batch.py --config experiments/configs/batch_tpu_pod.py

Every host reads its shard of the CIFAR-10 test set, shards each of its batches over its local TPU chips, writes its
progress to ``out`` (a directory every host can reach, or per host) and process 0 writes ``out/result.json``. The
batch is per host; T = 64 with the best low-latency recipe that batch.py runs (θ/2, no per-T tuning).
"""


def get_config():
  return dict(run="cifar10_resnet20", method="SNM + NeuronNorm + θ/2", steps=64, batch_size=1024, num_test=None,
              calib_examples=10000, checkpoint_every=2, distributed="auto", out="experiments/runs/batch_tpu_pod")
