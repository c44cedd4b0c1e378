r"""Compiled programs reused: a re-launch of the same sweep with jax's persistent compilation cache.

  python -m benchmarks.cache_bench            # configs/default.py (the main job; ~2 x its run time)
  python -m benchmarks.cache_bench --quick    # configs/default.py:quick (~1 minute)
  python -m benchmarks.cache_bench --config=configs/X.py[:variant] [--off]

`launch.py --config=CONFIG` three times, each in its own subprocess and into its own fresh workdir:
  cold  with an empty cache directory (JAX_COMPILATION_CACHE_DIR=a new temporary directory): every
        program is compiled and written to the cache -- the first launch a user sees;
  warm  the same command again: every program is read from the cache;
  off   `--compilation_cache=false` (with --quick or --off): what every launch cost before.
Each child is the launcher itself (launch.main under absl.app, argv as on the command line) with
jax.monitoring time-span listeners that record where the launch spends its compile time: tracing
(jaxpr), lowering (MLIR) and the backend compile (on a warm launch: the cache read). Nested spans
(a jit traced inside another) are merged, so the compile time is the union of those intervals.

Lines (each ends in ratio=):
  cache_relaunch  ratio = cold wall / warm wall (goal >= 1.5; process start to exit, as a user
                  times it); also off's wall, the cache size, and whether the rows (all fields but
                  wall_s) of the three launches are identical
  compile_share   ratio = (trace + lower + backend compile) / wall of the cold launch, and the same
                  split for the warm launch (what the cache leaves: tracing and lowering still run)
"""

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common

EVENTS = common.EVENTS


def child(out_path: str, launch_args):
  """Runs launch.main in this process with compile-time listeners; writes their totals to out_path."""
  t0 = time.time()
  import jax  # noqa: PLC0415
  spans = {k: [] for k in EVENTS.values()}
  counts = {'hits': 0, 'misses': 0}
  per_fn = {}  # backend compile (or cache read) seconds per jitted function name

  def on_span(event, start, end, fun_name='?', **_):
    if event in EVENTS:
      spans[EVENTS[event]].append((start, end))
      if EVENTS[event] == 'backend':
        per_fn[fun_name] = per_fn.get(fun_name, 0.0) + end - start

  def on_event(event, **_):
    if event == '/jax/compilation_cache/cache_hits':
      counts['hits'] += 1
    elif event == '/jax/compilation_cache/cache_misses':
      counts['misses'] += 1

  jax.monitoring.register_event_time_span_listener(on_span)
  jax.monitoring.register_event_listener(on_event)

  def report():
    out = {k: common.union_seconds(v) for k, v in spans.items()}
    out['compile'] = common.union_seconds([s for v in spans.values() for s in v])
    out['executables'] = len(spans['backend'])
    out['top'] = sorted(per_fn.items(), key=lambda kv: -kv[1])[:6]
    out['in_process_s'] = time.time() - t0
    out.update(counts)
    with open(out_path, 'w') as f:
      json.dump(out, f)

  atexit.register(report)
  from absl import app  # noqa: PLC0415
  import launch  # noqa: PLC0415 - the repository root is the working directory
  sys.argv = ['launch.py', *launch_args]
  app.run(launch.main, flags_parser=launch.parse_flags)


def launch_once(config: str, workdir: str, cache_dir: str, extra=()):
  """One launch in a fresh subprocess; returns (wall seconds, child's compile totals, rows without wall_s)."""
  stats = os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + '.stats.json')
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
  env['PYTHONPATH'] = common.ROOT + os.pathsep + env.get('PYTHONPATH', '')
  cmd = [sys.executable, '-m', 'benchmarks.cache_bench', '--child', stats, '--', f'--config={config}',
         f'--workdir={workdir}', *extra]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f'launch failed (exit {proc.returncode}): {proc.stderr[-2000:]}')
  with open(stats) as f:
    got = json.load(f)
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    rows = sorted((json.loads(line) for line in f), key=lambda r: json.dumps(
        [r['algorithm'], r['dim'], r['width'], r['seed'], r.get('rank'), r.get('alpha')]))
  return wall, got, [{k: v for k, v in r.items() if k != 'wall_s'} for r in rows]


def cache_size(path: str):
  files = [os.path.join(path, f) for f in os.listdir(path)] if os.path.isdir(path) else []
  return len(files), sum(os.path.getsize(f) for f in files)


def main(config: str, quick: bool, off: bool):
  common.header('cache_bench', quick)
  tmp = tempfile.mkdtemp(prefix='cache_bench_')
  try:
    cache = os.path.join(tmp, 'cache')
    runs = {'cold': launch_once(config, os.path.join(tmp, 'cold'), cache)}
    entries, size = cache_size(cache)
    runs['warm'] = launch_once(config, os.path.join(tmp, 'warm'), cache)
    grown = cache_size(cache)[0] - entries
    if off:
      runs['off'] = launch_once(config, os.path.join(tmp, 'off'), os.path.join(tmp, 'cache_off'),
                                ('--compilation_cache=false',))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(f'config {config}; {len(runs["cold"][2])} rows; cache after the cold launch: {entries} entries, '
        f'{size / 2 ** 20:.1f} MiB; the warm launch added {grown}')
  print(f'{"launch":<6}{"wall s":>8}{"compile s":>10}{"trace":>7}{"lower":>7}{"backend":>8}{"execs":>6}'
        f'{"hits":>6}{"misses":>7}')
  for name, (wall, st, _) in runs.items():
    print(f'{name:<6}{wall:>8.2f}{st["compile"]:>10.2f}{st["trace"]:>7.2f}{st["lower"]:>7.2f}{st["backend"]:>8.2f}'
          f'{st["executables"]:>6}{st["hits"]:>6}{st["misses"]:>7}')
  print('cold launch, backend compile seconds by jitted function (top 6): ' +
        ', '.join(f'{k} {v:.1f}' for k, v in runs['cold'][1]['top']))
  identical = all(r[2] == runs['cold'][2] for r in runs.values())
  (cw, cs, _), (ww, ws, _) = runs['cold'], runs['warm']
  off_s = f' off={runs["off"][0]:.2f}s' if off else ''
  print(f'cache_relaunch config={config} cold={cw:.2f}s warm={ww:.2f}s{off_s} rows_identical={identical} '
        f'cache_entries={entries} warm_hits={ws["hits"]} warm_misses={ws["misses"]} ratio={cw / ww:.2f}', flush=True)
  print(f'compile_share config={config} cold: compile {cs["compile"]:.2f}s of {cw:.2f}s (backend {cs["backend"]:.2f}s, '
        f'trace {cs["trace"]:.2f}s, lower {cs["lower"]:.2f}s, {cs["executables"]} executables); warm: compile '
        f'{ws["compile"]:.2f}s of {ww:.2f}s (cache reads {ws["backend"]:.2f}s) ratio={cs["compile"] / cw:.2f}', flush=True)
  if not identical:
    raise SystemExit('rows differ between launches')
  return cw / ww


if __name__ == '__main__':
  if len(sys.argv) > 2 and sys.argv[1] == '--child':
    child(sys.argv[2], sys.argv[4:] if sys.argv[3:4] == ['--'] else sys.argv[3:])
  else:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='configs/default.py:quick instead of configs/default.py')
    p.add_argument('--config', default='', help='any config spec (overrides --quick\'s choice)')
    p.add_argument('--off', action='store_true', help='also launch with the cache off (always with --quick)')
    a = p.parse_args()
    main(a.config or ('configs/default.py:quick' if a.quick else 'configs/default.py'), a.quick, a.off or a.quick)
