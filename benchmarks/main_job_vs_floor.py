r"""The main job against its LAPACK floor: configs/default.py from an empty compilation cache versus
numpy's QR of the same Jacobian shapes, timed in one script.

  python -m benchmarks.main_job_vs_floor             # floor + the main job, ~2-4 minutes on 2 cores
  python -m benchmarks.main_job_vs_floor --quick     # configs/default.py:quick and its floor (~30 s)
  python -m benchmarks.main_job_vs_floor --profile   # the main job once, in-process, profiled per
                                                     # program (no floor, no ratio)

The floor (issue "the main job near its floor"): the lazy_exact work of the main job is, per seed
and d, one factorization of its Jacobian, C(d+2, 3) x 200 (d+1) at the grid's largest width 200;
numpy.linalg.qr(mode='r') (LAPACK geqrf, R only: the least a factorization can do) of a random
matrix of each of those shapes, 4 seeds per d, is the floor. It runs in its own subprocess twice
before the job, with OpenBLAS on 1 thread and on its default thread count, and the faster of the
two counts (on a shared machine a multi-threaded OpenBLAS can be several times slower than one
thread); it runs once more after the job with that thread count, and the floor is the mean of the
two (the load of a shared machine drifts). Nothing else (gd, beyond_lazy, compilation, start-up,
figures) is in the floor.

The job: `launch.py --config=configs/default.py` in a fresh subprocess with an empty compilation
cache (JAX_COMPILATION_CACHE_DIR = a new temporary directory) into a fresh workdir; wall = process
start to exit; peak RSS = the child's ru_maxrss. The script checks the m* of summary.json against
the main job's published values (lazy_exact 11, 16, 35, 51, 112, 200; beyond_lazy 3; gd 4).

Lines (each ends in ratio=):
  main_job_vs_floor   ratio = job wall / floor seconds (goal <= 2.5), with the peak RSS (goal
                      <= 2 GiB), m* and the load average at start and end
--profile prints, per program: trace + lower + XLA compile seconds, execution seconds, the host
work around it (run data, finalize: float64 rel_errors and rows) and the peak RSS after it; then
start-up, targets, summary, figures and the gaps between programs.
"""

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common

DIMS = (6, 8, 12, 16, 24, 32)
QUICK_DIMS = (6, 8)
SEEDS = 4
QUICK_SEEDS = 2
TOP_WIDTH = 200
QUICK_TOP_WIDTH = 16
EXPECTED_M_STAR = {'lazy_exact': {6: 11, 8: 16, 12: 35, 16: 51, 24: 112, 32: 200},
                   'beyond_lazy': {d: 3 for d in DIMS}, 'gd': {d: 4 for d in DIMS}}
QUICK_M_STAR = {'lazy_exact': {6: 11, 8: 16}, 'beyond_lazy': {6: 3, 8: 3}}  # gd at d = 8 needs > 2 seeds
EVENTS = common.EVENTS


# ------------------------------------------------------------------------------------------------
# The floor

def floor_child(quick: bool):
  """numpy QR (mode='r') of a random C(d+2,3) x 200(d+1) matrix, SEEDS per d; prints JSON."""
  import numpy as np  # noqa: PLC0415 - after OPENBLAS_NUM_THREADS is set by the parent
  rng = np.random.default_rng(0)
  per_d = {}
  for d in (QUICK_DIMS if quick else DIMS):
    n, p = math.comb(d + 2, 3), (QUICK_TOP_WIDTH if quick else TOP_WIDTH) * (d + 1)
    total = 0.0
    for _ in range(QUICK_SEEDS if quick else SEEDS):
      a = rng.standard_normal((p, n))  # numpy's QR of J^T: the floor's shape, 200(d+1) x C(d+2,3)
      t0 = time.perf_counter()
      np.linalg.qr(a, mode='r')
      total += time.perf_counter() - t0
    per_d[d] = total
  print(json.dumps({'per_d': per_d, 'total': sum(per_d.values())}))


def floor(quick: bool, threads):
  env = {} if threads is None else {'OPENBLAS_NUM_THREADS': str(threads)}
  return common.run_json_subprocess('benchmarks.main_job_vs_floor', ['--floor-child'] + (['--quick'] if quick else []),
                                    env=env, timeout=3600)


# ------------------------------------------------------------------------------------------------
# The job

def launch(config: str, workdir: str, cache_dir: str, env_extra=None):
  """launch.py in a fresh subprocess; returns (wall seconds, peak RSS bytes of the child)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, **(env_extra or {}))
  env['PYTHONPATH'] = common.ROOT + os.pathsep + env.get('PYTHONPATH', '')
  t0 = time.perf_counter()
  proc = subprocess.Popen([sys.executable, os.path.join(common.ROOT, 'launch.py'), f'--config={config}',
                           f'--workdir={workdir}'], cwd=common.ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out, _ = proc.communicate()
  wall = time.perf_counter() - t0
  rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
  if proc.returncode != 0:
    raise RuntimeError(f'launch failed (exit {proc.returncode}):\n{out[-3000:]}')
  return wall, rss


def m_stars(workdir: str):
  with open(os.path.join(workdir, 'summary.json')) as f:
    s = json.load(f)
  return {(t['algorithm'], t['dim']): t['m_star'] for t in s['thresholds']}


def main(quick: bool, job_env=None):
  common.header('main_job_vs_floor', quick)
  config = 'configs/default.py:quick' if quick else 'configs/default.py'
  tmp = tempfile.mkdtemp(prefix='main_job_vs_floor_')
  try:
    load0 = common.loadavg()
    floors = {t: floor(quick, t) for t in (1, None)}
    best_t = min(floors, key=lambda t: floors[t]['total'])
    load1 = common.loadavg()
    wall, rss = launch(config, os.path.join(tmp, 'wd'), os.path.join(tmp, 'cache'), job_env)
    load2 = common.loadavg()
    after = floor(quick, best_t)  # again, with the faster thread setting: the load drifts
    load3 = common.loadavg()
    ms = m_stars(os.path.join(tmp, 'wd'))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  expected = QUICK_M_STAR if quick else EXPECTED_M_STAR
  same = all(ms.get((a, d)) == m for a, by_d in expected.items() for d, m in by_d.items())
  for t, f in list(floors.items()) + [(best_t, after)]:
    print(f'  floor{" (after the job)" if f is after else ""}, OpenBLAS threads {t or "default"}: {f["total"]:.2f}s '
          f'({", ".join(f"d={d} {s:.2f}s" for d, s in f["per_d"].items())})')
  floor_s = 0.5 * (floors[best_t]['total'] + after['total'])
  shown = {a: [ms.get((a, d)) for d in sorted(by_d)] for a, by_d in expected.items()}
  print(f'  m*: {shown} (expected: {"same" if same else "DIFFERENT"})')
  print(f'main_job_vs_floor config={config} job={wall:.1f}s floor={floor_s:.1f}s '
        f'(before {floors[best_t]["total"]:.1f}s, after {after["total"]:.1f}s) peak_rss={common.fmt_bytes(rss)} '
        f'm_star_same={same} load={load0},{load1},{load2},{load3} ratio={wall / floor_s:.2f}', flush=True)
  if not same:
    raise SystemExit('m* differs from the published values')
  return wall / floor_s


# ------------------------------------------------------------------------------------------------
# The per-program profile (in-process)

def profile_child(config: str, workdir: str, out_path: str):
  """Runs the launcher in this process with timers around the engine's steps; writes JSON."""
  t_start = time.time()
  # launch first: it fixes OPENBLAS_NUM_THREADS before numpy loads, as a plain launch does (importing
  # overparam first would leave LAPACK on one thread and profile a slower job than the one timed)
  import launch  # noqa: PLC0415 - the repository root is the working directory
  import jax  # noqa: PLC0415
  spans = []

  def on_span(event, start, end, **_):
    if event in EVENTS:
      spans.append((EVENTS[event], start, end))

  jax.monitoring.register_event_time_span_listener(on_span)
  from overparam import analysis, engine, planner, plots, rows, targets  # noqa: PLC0415
  events = []  # (kind, label, wall start, wall end, cpu seconds, ru_maxrss after)

  def timed(kind, fn, label_of=lambda *a, **k: ''):
    def wrapper(*args, **kwargs):
      w0, c0 = time.time(), time.process_time()
      try:
        return fn(*args, **kwargs)
      finally:
        events.append((kind, label_of(*args, **kwargs), w0, time.time(), time.process_time() - c0,
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    return wrapper

  # experiments calls these as module attributes, so wrapping them here times every call
  engine.run_program = timed('program', engine.run_program, lambda *a, **k: k.get('label', ''))
  planner.run_data = timed('run_data', planner.run_data)
  rows.finalize = timed('finalize', rows.finalize, lambda prog, *a, **k: prog.label)
  targets.build_all = timed('target', targets.build_all)
  plots.draw_all = timed('figures', plots.draw_all)
  analysis.summarize = timed('summary', analysis.summarize)

  def report():
    with open(out_path, 'w') as f:
      json.dump({'t_start': t_start, 't_end': time.time(), 'events': events, 'spans': spans,
                 'peak_rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                 'cpu': time.process_time()}, f)

  import atexit  # noqa: PLC0415
  atexit.register(report)
  from absl import app  # noqa: PLC0415
  sys.argv = ['launch.py', f'--config={config}', f'--workdir={workdir}']
  app.run(launch.main, flags_parser=launch.parse_flags)


def _clip(spans, lo, hi):
  return [(max(s, lo), min(e, hi)) for _, s, e in spans if e > lo and s < hi]


def profile(quick: bool, root: str = ''):
  """The main job profiled per program. root: another checkout to profile (its launch.py and
  overparam/, e.g. the code before this change), default this one."""
  common.header('main_job_vs_floor (profile)', quick)
  config = 'configs/default.py:quick' if quick else 'configs/default.py'
  root = root or common.ROOT
  tmp = tempfile.mkdtemp(prefix='main_job_profile_')
  out_path = os.path.join(tmp, 'profile.json')
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, 'cache'))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')  # its overparam, launch.py
  load0 = common.loadavg()
  t0 = time.time()
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--profile-child', config,
                         os.path.join(tmp, 'wd'), out_path], cwd=root, env=env, capture_output=True, text=True)
  wall = time.time() - t0
  if proc.returncode != 0:
    raise RuntimeError(proc.stderr[-3000:])
  with open(out_path) as f:
    p = json.load(f)
  ms = m_stars(os.path.join(tmp, 'wd'))
  shutil.rmtree(tmp, ignore_errors=True)
  spans, events = p['spans'], p['events']
  programs = [e for e in events if e[0] == 'program']
  print(f'  {root}: {config}, wall {wall:.1f}s (process {p["t_end"] - p["t_start"]:.1f}s in-process), '
        f'CPU {p["cpu"]:.1f}s, peak RSS {common.fmt_bytes(p["peak_rss"])}, load {load0} -> {common.loadavg()}')
  print(f'  {"program":<44}{"wall":>7}{"compile":>9}{"(XLA)":>7}{"exec":>7}{"cpu":>7}{"host":>7}{"rss":>10}')
  tot = {'wall': 0.0, 'compile': 0.0, 'backend': 0.0, 'exec': 0.0, 'host': 0.0}
  prev_end = None
  gaps = 0.0
  for kind, label, w0, w1, cpu, rss in programs:
    comp = common.union_seconds(_clip(spans, w0, w1))
    backend = common.union_seconds(_clip([s for s in spans if s[0] == 'backend'], w0, w1))
    # host work of this program: its run data before it and its finalize after it
    host = sum(e[3] - e[2] for e in events if e[0] in ('run_data', 'finalize') and
               (prev_end or 0) <= e[2] and e[3] <= (w1 + 3600) and
               (e[0] != 'finalize' or e[2] >= w1) and (e[0] != 'run_data' or e[3] <= w0))
    short = label.replace(' widths=[5, 6, 7, 9, 11, 13, 16, 19, 24, 29, 35, 42, 51, 62, 76, 92, 112, 136, 165, 200]',
                          ' (grid 5..200)')
    print(f'  {short:<44}{w1 - w0:>7.2f}{comp:>9.2f}{backend:>7.2f}{w1 - w0 - comp:>7.2f}{cpu:>7.2f}'
          f'{"":>7}{common.fmt_bytes(rss):>10}')
    tot['wall'] += w1 - w0
    tot['compile'] += comp
    tot['backend'] += backend
    tot['exec'] += w1 - w0 - comp
    if prev_end is not None:
      gaps += w0 - prev_end
    prev_end = w1
  by_kind = {}
  for e in events:
    if e[0] != 'program':
      by_kind[e[0]] = by_kind.get(e[0], 0.0) + e[3] - e[2]
  first = min(e[2] for e in events) if events else p['t_start']
  print(f'  programs: {len(programs)}, wall {tot["wall"]:.1f}s = compile {tot["compile"]:.1f}s (XLA '
        f'{tot["backend"]:.1f}s) + execution {tot["exec"]:.1f}s; between programs {gaps:.1f}s')
  print('  host: ' + ', '.join(f'{k} {v:.1f}s' for k, v in sorted(by_kind.items())) +
        f'; process start to first step {first - p["t_start"]:.1f}s (in-process; + interpreter start)')
  print(f'  compile outside programs (targets, eager ops): '
        f'{common.union_seconds(spans and [(s, e) for _, s, e in spans]) - tot["compile"]:.1f}s')
  print(f'  m*: {sorted(ms.items())}')


if __name__ == '__main__':
  if len(sys.argv) > 1 and sys.argv[1] == '--floor-child':
    floor_child('--quick' in sys.argv)
  elif len(sys.argv) > 1 and sys.argv[1] == '--profile-child':
    profile_child(*sys.argv[2:5])
  else:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='configs/default.py:quick and its floor')
    ap.add_argument('--profile', action='store_true', help='profile the main job per program instead')
    ap.add_argument('--root', default='', help='with --profile: profile another checkout (its launch.py)')
    ap.add_argument('--job-env', action='append', default=[], help='KEY=VALUE for the job\'s environment (repeatable)')
    a = ap.parse_args()
    if a.profile:
      profile(a.quick, a.root)
    else:
      main(a.quick, dict(kv.split('=', 1) for kv in a.job_env))
