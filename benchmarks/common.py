"""Helpers shared by the benchmarks: timing, peak memory of subprocesses, machine description.

Every benchmark reports a RATIO of two measurements taken side by side in the same script run:
the machines these run on are shared and noisy, so absolute seconds are context, not results.
"""

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_seconds(fn, *args, repeats=20):
  """Median wall time of fn(*args) (blocked until ready) after one warm-up call."""
  import jax  # noqa: PLC0415 - keep this module importable without initializing jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def machine() -> str:
  """One line: CPU model and core count, load average, jax version and backend."""
  cpu = platform.processor() or 'cpu'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  out = f'{cpu}, {os.cpu_count()} cores, load average {load}'
  try:
    import jax  # noqa: PLC0415
    out += f', jax {jax.__version__} {jax.default_backend()} x{jax.device_count()}'
  except Exception:  # noqa: BLE001 - description only
    pass
  return out


def loadavg() -> str:
  """The 1/5/15-minute load averages as '0.12/0.34/0.56' (printed beside a timing)."""
  return '/'.join(f'{x:.2f}' for x in os.getloadavg())


def header(name: str, quick: bool):
  print(f'# {name} ({"quick" if quick else "full"}) {datetime.datetime.now().isoformat(timespec="seconds")}; '
        f'{machine()}', flush=True)


def peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_json_subprocess(module: str, args, env=None, timeout=900) -> dict:
  """Runs `python -m module args...` from the repository root; returns the JSON object that the
  child prints on its last stdout line. Raises RuntimeError with the child's stderr tail on failure."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  full_env['PYTHONPATH'] = ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f'{module} {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1])


def fmt_bytes(n: float) -> str:
  for unit, k in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if abs(n) >= k:
      return f'{n / k:.2f}{unit}'
  return f'{n:.0f}B'


# jax.monitoring event names of a compilation's phases (register_event_time_span_listener)
EVENTS = {'/jax/core/compile/jaxpr_trace_duration': 'trace',
          '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
          '/jax/core/compile/backend_compile_duration': 'backend'}


def union_seconds(spans) -> float:
  """Total length of the union of [start, end] intervals."""
  total, end = 0.0, -float('inf')
  for s, e in sorted(spans):
    if e > end:
      total += e - max(s, end)
      end = e
  return total
