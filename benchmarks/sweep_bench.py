r"""The sweep as one program versus one run at a time versus a Python loop of jitted steps.

  python -m benchmarks.sweep_bench            # full: l=3, d=40, r=3, 64 seeds, 8 widths, 1000 steps
  python -m benchmarks.sweep_bench --quick    # 8 seeds, 200 steps

All three arms run the same algorithm (gd, cp, implicit loss, sgd) on the same targets and inits
with early stopping disabled (eps = 1e-30), so they compute the same numbers; the script checks
that they agree. Times include compilation; compile time is also reported on its own (profile below).

  sweep        engine programs (planner.plan: one per width bucket, all seeds and widths of a bucket
               vmapped; engine.run_program, as the launcher runs them)
  one_at_time  each (width, seed) run as its own overparam.fit (its compiled while_loop program,
               compiled once per width and cached; the loop runs all steps since eps = 1e-30)
  python_loop  each run as a Python loop of a jitted single-run alg.step on fit's run data
               (fitting.prepare, fitting.run_data); timed on two seeds per width (the first
               compiles, the second is warm) and extrapolated as first + (seeds - 1) * warm
  sweep_Ndev   (informative, when the host has N > 1 cores) the engine arm again in a subprocess
               with JAX_NUM_CPU_DEVICES=N, so the run axis is sharded over N CPU devices, one per
               core (on one CPU device the vmapped small matmuls run on one core)
  sweep_cached (informative) the engine arm in two fresh subprocesses sharing jax's persistent
               compilation cache (JAX_COMPILATION_CACHE_DIR): the second reads every program from
               the cache, as a re-launch (resume, more seeds of the same shapes) would

Profile (where the sweep's time goes), per width-bucket program: compile seconds of each compiled
function (init, chunk, finish = export + extras; lower + compile, cold caches), warm execution seconds of
the chunk, the FLOPs the chunk performs (counted from the contraction sizes of the implicit loss
and its gradient, padded bucket width B: 4 B^2 d + 4 B r d + 2 r^2 d per run-step) and the achieved
FLOP/s, against two references measured in the same run: a 2048^2 float32 matmul and a batched
(runs, B, d) x (runs, d, B) matmul of the largest bucket's shapes.
"""

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
import overparam
from overparam import config_lib, engine, fitting, planner, targets as targets_lib


def bench_config(quick: bool):
  c = config_lib.base_config()
  c.algorithms = ('gd',)
  c.parametrization = 'cp'
  c.order, c.dims, c.rank = 3, (40,), 3
  c.widths = (4, 8, 12, 16, 24, 32, 48, 64)
  c.num_seeds = 8 if quick else 64
  c.steps = 200 if quick else 1000
  c.chunk_steps = c.steps
  c.eps = 1e-30
  c.lr, c.init_scale = 0.05, 0.3
  c.checkpoint_every_s = 1e9
  return c


def _inputs(c):
  d = c.dims[0]
  seeds = [c.seed + s for s in range(c.num_seeds)]
  targets = {s: targets_lib.make_target(c, d, s, None) for s in seeds}
  return d, seeds, targets


def run_sweep(c):
  """Engine: one program per bucket (planner.plan). Returns ({(m, s): final coeffs}, seconds)."""
  d, seeds, targets = _inputs(c)
  out = {}
  t0 = time.perf_counter()
  for prog in planner.plan(c):
    runs = prog.cells(seeds)
    res = engine.run_program(planner.run_algorithm(prog, runs), prog.task, planner.run_data(prog, runs, targets), runs,
                             chunk_steps=c.steps)
    for i, (m, s, _) in enumerate(runs):
      out[m, s] = res.exported[0][i][:m]
  return out, time.perf_counter() - t0


def _cp(c, t):
  return overparam.CPTensor(t.coeffs, t.factors, c.order)


def run_one_at_a_time(c):
  """Each (width, seed) as its own overparam.fit (one compiled program per width, cached)."""
  d, seeds, targets = _inputs(c)
  alg = config_lib.algorithm_of(c, 'gd')
  out = {}
  t0 = time.perf_counter()
  for m in c.widths:
    for s in seeds:
      res = overparam.fit(alg, jax.random.PRNGKey(s), _cp(c, targets[s]), width=m, steps=c.steps, eps=c.eps)
      out[m, s] = np.asarray(res.coeffs)
  return out, time.perf_counter() - t0


def run_python_loop(c):
  """Each run as a Python loop of a jitted alg.step on fit's run (fitting.prepare + fitting.run_data: the
  same task, keys and data as overparam.fit). Two seeds per width; returns ({(m, s): coeffs},
  extrapolated seconds for every seed)."""
  d, seeds, targets = _inputs(c)
  out, total = {}, 0.0
  for m in c.widths:
    step = init = None
    times = []
    for s in seeds[:2]:
      t0 = time.perf_counter()
      task, t, width, eps, alg = fitting.prepare(config_lib.algorithm_of(c, 'gd'), _cp(c, targets[s]), m, c.steps,
                                                 c.eps, None)
      data = fitting.run_data(alg, task, jax.random.PRNGKey(s), t, width, eps)
      if step is None:
        step = jax.jit(lambda a, st, dt, task=task: a.step(task, st, dt))
        init = jax.jit(lambda a, dt, task=task: a.init(task, dt))
      st = init(alg, data)
      for _ in range(c.steps):
        st = step(alg, st, data)
      out[m, s] = np.asarray(alg.export(task, st, data)[0])
      times.append(time.perf_counter() - t0)
    total += times[0] + (len(seeds) - 1) * times[-1]
  return out, total


def flops_per_run_step(c, bucket: int) -> int:
  d, r = c.dims[0], c.rank
  return 4 * bucket * bucket * d + 4 * bucket * r * d + 2 * r * r * d


def profile(c):
  """Per bucket: compile seconds of each compiled function, warm chunk seconds, FLOP/s."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  d, seeds, targets = _inputs(c)
  sharding = NamedSharding(engine.run_mesh(), P('runs'))
  rows = []
  for prog in planner.plan(c):
    b, ws = prog.bucket, list(prog.widths)
    cells = prog.cells(seeds)
    alg = engine.to_global(planner.run_algorithm(prog, cells), sharding)
    g = engine.to_global(planner.run_data(prog, cells, targets), sharding)
    engine.compiled.cache_clear()
    jax.clear_caches()
    fns = engine.compiled(jax.tree.structure(alg), prog.task, c.steps, sharding, 0)
    comp = {}
    t0 = time.perf_counter()
    init = fns.init.lower(alg, g).compile()
    comp['init'] = time.perf_counter() - t0
    state = init(alg, g)
    for name, fn in (('chunk', fns.chunk), ('finish', fns.finish)):
      t0 = time.perf_counter()
      compiled_fn = fn.lower(alg, state, g).compile()
      comp[name] = time.perf_counter() - t0
      if name == 'chunk':
        chunk = compiled_fn
    times = []
    for _ in range(2):
      st = jax.block_until_ready(init(alg, g))
      t0 = time.perf_counter()
      jax.block_until_ready(chunk(alg, st, g))
      times.append(time.perf_counter() - t0)
    run_s = min(times)
    flops = flops_per_run_step(c, b) * len(cells) * c.steps
    rows.append(dict(bucket=b, widths=ws, runs=len(cells), compile=comp, run_s=run_s, flops=flops))
  return rows


def matmul_references(c, bucket: int, runs: int):
  """GFLOP/s of a 2048^2 f32 matmul and of a batched (runs, B, d) x (runs, d, B) matmul."""
  n = 2048
  x = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  square = 2 * n ** 3 / common.median_seconds(jax.jit(jnp.matmul), x, x, repeats=10)
  d = c.dims[0]
  v = jax.random.normal(jax.random.PRNGKey(2), (runs, bucket, d), jnp.float32)
  batched_fn = jax.jit(lambda v: jnp.einsum('nbd,ncd->nbc', v, v))
  batched = 2 * runs * bucket * bucket * d / common.median_seconds(batched_fn, v, repeats=20)
  return square, batched


def sweep_subprocess(quick: bool, env) -> tuple:
  """The engine arm in a fresh subprocess with `env`: (seconds, devices, {(m, s): coeffs})."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'coeffs.npz')
    out = common.run_json_subprocess('benchmarks.sweep_bench', ['--sweep-only', path] + (['--quick'] if quick else []),
                                     env=env)
    with np.load(path) as z:
      coeffs = {tuple(int(x) for x in k.split('_')): z[k] for k in z.files}
  return out['seconds'], out['devices'], coeffs


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def main(quick: bool = False):
  common.header('sweep_bench', quick)
  c = bench_config(quick)
  n_runs = len(c.widths) * c.num_seeds
  swept, t_sweep = run_sweep(c)
  one, t_one = run_one_at_a_time(c)
  loop, t_loop = run_python_loop(c)
  err = max(float(np.max(np.abs(swept[k] - one[k]))) for k in one)
  err_loop = max(float(np.max(np.abs(swept[k] - loop[k]))) for k in loop)
  print(f'config: l=3 d=40 r=3 seeds={c.num_seeds} widths={c.widths} steps={c.steps} runs={n_runs} '
        f'devices={jax.device_count()} backend={jax.default_backend()}')
  print(f'max |coeff difference| sweep vs one-at-a-time {err:.2e}, vs python loop {err_loop:.2e}')
  print(f'sweep {t_sweep:.2f}s, one-at-a-time {t_one:.2f}s, '
        f'python loop {t_loop:.1f}s (extrapolated from 2 seeds per width)')
  prof = profile(c)
  top = prof[-1]
  square, batched = matmul_references(c, top['bucket'], top['runs'])
  print(f'profile (cold compile seconds per function; warm chunk of {c.steps} steps):')
  print(f'  {"bucket":>6} {"widths":<16}{"runs":>5}{"init":>7}{"chunk":>7}{"finish":>7}'
        f'{"compile":>8}{"run":>7}{"GFLOP":>8}{"GFLOP/s":>9}')
  tot_c = tot_r = 0.0
  for r in prof:
    cs = sum(r['compile'].values())
    tot_c, tot_r = tot_c + cs, tot_r + r['run_s']
    print(f'  {r["bucket"]:>6} {str(r["widths"]):<16}{r["runs"]:>5}' + ''.join(f'{r["compile"][k]:>7.2f}' for k in
          ('init', 'chunk', 'finish')) + f'{cs:>8.2f}{r["run_s"]:>7.2f}{r["flops"] / 1e9:>8.1f}'
          f'{r["flops"] / r["run_s"] / 1e9:>9.1f}')
  flops = sum(r['flops'] for r in prof)
  ideal = sum(flops_per_run_step(c, m) for m in c.widths) * c.num_seeds * c.steps
  print(f'  total compile {tot_c:.2f}s, execution {tot_r:.2f}s; {flops / 1e9:.0f} GFLOP at '
        f'{flops / tot_r / 1e9:.1f} GFLOP/s (padding to buckets: {flops / ideal:.2f}x the unpadded FLOPs)')
  print(f'  references: matmul 2048^2 {square / 1e9:.1f} GFLOP/s, batched ({top["runs"]}, {top["bucket"]}, '
        f'{c.dims[0]}) x ({top["runs"]}, {c.dims[0]}, {top["bucket"]}) {batched / 1e9:.1f} GFLOP/s')
  print(f'  bound: with zero compile time and the chunks at the batched-matmul rate the sweep would take '
        f'{flops / batched:.2f}s, i.e. at most {t_loop / (flops / batched):.1f}x the Python loop')
  if jax.default_backend() == 'cpu' and (os.cpu_count() or 1) > 1 and jax.device_count() == 1:
    t_dev, n_dev, coeffs = sweep_subprocess(quick, {'JAX_NUM_CPU_DEVICES': str(os.cpu_count())})
    print(f'sweep on {n_dev} CPU devices (JAX_NUM_CPU_DEVICES={n_dev}, runs sharded): {t_dev:.2f}s, '
          f'{t_loop / t_dev:.2f}x the Python loop; max |coeff difference| vs 1 device {max_diff(swept, coeffs):.1e}')
  with tempfile.TemporaryDirectory() as cache:
    env = {'JAX_COMPILATION_CACHE_DIR': cache, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
           'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
    t_fill, _, _ = sweep_subprocess(quick, env)
    t_cached, _, coeffs = sweep_subprocess(quick, env)
  print(f'sweep with jax\'s persistent compilation cache, second launch (programs read from the cache): '
        f'{t_cached:.2f}s (first launch {t_fill:.2f}s), {t_loop / t_cached:.2f}x the Python loop; '
        f'max |coeff difference| vs no cache {max_diff(swept, coeffs):.1e}')
  print(f'sweep_vs_one_at_a_time seconds={t_sweep:.2f} baseline={t_one:.2f} ratio={t_one / t_sweep:.2f}')
  print(f'sweep_vs_python_loop seconds={t_sweep:.2f} baseline={t_loop:.1f} ratio={t_loop / t_sweep:.2f}')
  return {'one_at_a_time': t_one / t_sweep, 'python_loop': t_loop / t_sweep}


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true')
  p.add_argument('--sweep-only', metavar='NPZ', help='internal: the engine arm alone; coeffs to NPZ, JSON out')
  a = p.parse_args()
  if a.sweep_only:
    swept, secs = run_sweep(bench_config(a.quick))
    np.savez(a.sweep_only, **{f'{m}_{s}': v for (m, s), v in swept.items()})
    print(json.dumps({'seconds': secs, 'devices': jax.device_count()}))
  else:
    main(a.quick)
