r"""The test loop: the README's test command against the suite as it ran before issue "the main job
near its floor" made it parallel, both from an empty compilation cache, in one script.

  python -m benchmarks.test_loop --quick   # the quick loop (-m "not slow"), both ways, ~5 minutes
  python -m benchmarks.test_loop           # the full suite, both ways, ~15 minutes on 2 cores
  python -m benchmarks.test_loop --warm    # and ours once more on the cache its first run left

ours:     python -m pytest -q -n auto --maxprocesses=4 tests   (the README's command: one pytest-xdist
          worker per core, at most 4; tests/conftest.py compiles at XLA backend optimization level 0
          with the classic fusion emitters)
baseline: python -m pytest -q -n 0 tests with XLA_FLAGS set to XLA's defaults (BASELINE_XLA_FLAGS:
          one process, XLA's default code generation: the suite as it ran before)

Both add -rfE, so that a failing test is named on the line. Each run gets a fresh XDG_CACHE_HOME
(so ~/.cache/overparam/jax, the compilation cache the tests' launches and API calls share, starts
empty, as on a fresh CI machine) and no JAX_COMPILATION_CACHE_DIR. `--warm` adds a second run of
ours on the cache its first run left (a developer's repeated loop). The baseline runs first, then
ours: on a shared machine compare the ratio, with the load averages printed beside it.

Lines (each ends in ratio=):
  test_loop   ratio = baseline wall / ours wall, with both walls, the pass counts and the load
              averages at start and end
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import common

OURS = ['-n', 'auto', '--maxprocesses=4']
BASELINE = ['-n', '0']
BASELINE_XLA_FLAGS = '--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true'


def run_suite(args, quick: bool, cache_home: str, xla_flags=None):
  """One pytest run from the repository root; returns (wall seconds, summary line)."""
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_COMPILATION_CACHE_DIR', 'XLA_FLAGS')}
  env['XDG_CACHE_HOME'] = cache_home
  if xla_flags:
    env['XLA_FLAGS'] = xla_flags
  cmd = [sys.executable, '-m', 'pytest', '-q', '-rfE', *args, *(['-m', 'not slow'] if quick else []), 'tests']
  t0 = time.time()
  p = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=3600)
  wall = time.time() - t0
  lines = [x for x in p.stdout.strip().splitlines() if re.search(r'\d+ (passed|failed)', x)]
  summary = lines[-1].strip('= ') if lines else f'exit {p.returncode}: {p.stdout[-300:]}{p.stderr[-300:]}'
  if p.returncode != 0:
    failed = [x.split()[1] for x in p.stdout.splitlines() if x.startswith(('FAILED ', 'ERROR '))]
    summary = f'FAILED (exit {p.returncode}): {summary}; {" ".join(failed)}'
  return wall, summary


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--quick', action='store_true', help='the quick loop (-m "not slow") instead of the full suite')
  ap.add_argument('--warm', action='store_true', help='also time ours again on the cache its first run left')
  a = ap.parse_args()
  common.header('test_loop', a.quick)
  loads = [common.loadavg()]
  with tempfile.TemporaryDirectory() as tmp:
    base_s, base_sum = run_suite(BASELINE, a.quick, os.path.join(tmp, 'base'),
                                 xla_flags=BASELINE_XLA_FLAGS)
    print(f'  baseline (one process, XLA defaults): {base_s:.1f}s  {base_sum}', flush=True)
    loads.append(common.loadavg())
    ours_s, ours_sum = run_suite(OURS, a.quick, os.path.join(tmp, 'ours'))
    print(f'  ours (README command): {ours_s:.1f}s  {ours_sum}', flush=True)
    loads.append(common.loadavg())
    warm = ''
    if a.warm:
      warm_s, warm_sum = run_suite(OURS, a.quick, os.path.join(tmp, 'ours'))
      print(f'  ours again, warm cache: {warm_s:.1f}s  {warm_sum}', flush=True)
      loads.append(common.loadavg())
      warm = f' warm={warm_s:.1f}s'
  ok = 'FAILED' not in base_sum + ours_sum
  print(f'test_loop suite={"quick" if a.quick else "full"} baseline={base_s:.1f}s ours={ours_s:.1f}s{warm} '
        f'all_passed={ok} load={",".join(loads)} ratio={base_s / ours_s:.2f}', flush=True)


if __name__ == '__main__':
  main()
