"""Times the two test tiers and writes ``tests/tier_times.json`` (the development guide's numbers come from it).

    python scripts/time_tests.py [--tiers fast,full] [--note "..."]

Runs the README's test command, ``bash scripts/test.sh`` (pytest in one worker per core), with ``--durations=0 -p
no:cacheprovider``, for the fast tier (``-m "not slow"``) and for the whole suite, one after the other, and records for each: the wall time, the CPU time of pytest and its subprocesses, the
load average before and after (another job on the machine makes every time an upper bound: stop it first), the
counts pytest reports, and every test's duration (setup + call + teardown). Exits non-zero if a tier fails (the file
is written anyway, with the failure counts). Run it in the activated ``.venv`` on an otherwise idle machine.
"""
import argparse
import datetime
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jaxsnn.files import write_json  # noqa: E402  (atomic)

TIERS = {"fast": ["-m", "not slow"], "full": []}
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)$")
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def run_tier(name: str) -> dict:
  command = ["bash", "scripts/test.sh", "--durations=0", "-p", "no:cacheprovider", *TIERS[name]]
  before = os.getloadavg()
  usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  durations: dict[str, float] = {}
  for line in done.stdout.splitlines():
    m = DURATION.match(line.strip())
    if m:
      durations[m.group(3)] = round(durations.get(m.group(3), 0.0) + float(m.group(1)), 2)
  summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
  counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNTS.findall(summary)}
  print(f"{name}: {summary} ({wall / 60:.1f} min wall)", flush=True)
  return {"command": " ".join(command), "returncode": done.returncode, "counts": counts,
          "tests": counts.get("passed", 0) + counts.get("failed", 0), "wall_s": round(wall, 1),
          "cpu_user_s": round(usage1.ru_utime - usage0.ru_utime, 1),
          "cpu_sys_s": round(usage1.ru_stime - usage0.ru_stime, 1),
          "load_average_before": [round(x, 2) for x in before],
          "load_average_after": [round(x, 2) for x in os.getloadavg()], "durations_s": durations}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiers", default="fast,full")
  parser.add_argument("--note", default="")
  parser.add_argument("--out", default=str(ROOT / "tests/tier_times.json"))
  args = parser.parse_args()
  report = {"what": "Wall and CPU times of the two test tiers on the development machine (scripts/time_tests.py)",
            "date": datetime.date.today().isoformat(), "cpu_cores": os.cpu_count(), "note": args.note}
  for tier in args.tiers.split(","):
    report[tier] = run_tier(tier)
  write_json(args.out, report)
  print(f"wrote {args.out}")
  sys.exit(max(report[t]["returncode"] for t in args.tiers.split(",")))


if __name__ == "__main__":
  main()
