r"""The sweep as one program versus one run at a time versus a Python loop of jitted steps.

  python -m benchmarks.sweep_bench            # full: l=3, d=40, r=3, 64 seeds, 8 widths, 1000 steps
  python -m benchmarks.sweep_bench --quick    # 8 seeds, 200 steps

All three arms run the same algorithm (gd, cp, implicit loss, sgd) on the same targets and inits
with early stopping disabled (eps = 1e-30), so they compute the same numbers; the script checks
that they agree. Times include compilation; compile time is also reported on its own
(the first call of each compiled function minus a second, warm call).

  sweep        engine programs (one per width bucket, all seeds and widths of a bucket vmapped)
  one_at_time  each (width, seed) run as its own jitted lax.scan (one compile per width)
  python_loop  each run as a Python loop of a jitted step; timed on two seeds per width (the first
               compiles, the second is warm) and extrapolated as first + (seeds - 1) * warm
"""

import argparse
import time

import jax
import numpy as np

from overparam import config_lib, experiments, sweep


def bench_config(quick: bool):
  c = config_lib.base_config()
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
  targets = {s: experiments.make_target(c, d, s, None) for s in seeds}
  return d, seeds, targets


def run_sweep(c):
  """Engine: one program per bucket. Returns ({(m, s): final coeffs}, seconds)."""
  d, seeds, targets = _inputs(c)
  out = {}
  t0 = time.perf_counter()
  for ws in sweep.bucket_widths(c.widths):
    b = max(ws)
    cells = [(m, s) for m in ws for s in seeds]
    alg = experiments.build_algorithm('gd', c, d, b)
    res = sweep.run_program(alg, experiments.run_data(c, cells, targets, b, 'implicit'), cells,
                            chunk_steps=c.steps)
    for i, (m, s) in enumerate(cells):
      out[m, s] = res.exported[0][i][:m]
  return out, time.perf_counter() - t0


def _single(c, m, s, targets, d):
  alg = experiments.build_algorithm('gd', c, d, m)
  data = jax.tree.map(lambda x: x[0], experiments.run_data(c, [(m, s)], targets, m, 'implicit'))
  return alg, data


def run_one_at_a_time(c):
  d, seeds, targets = _inputs(c)
  out = {}
  t0 = time.perf_counter()
  for m in c.widths:
    alg = experiments.build_algorithm('gd', c, d, m)

    @jax.jit
    def solve(data, alg=alg):
      body = lambda st, _: (alg.step(st, data), None)
      return alg.export(jax.lax.scan(body, alg.init(data), None, length=c.steps)[0], data)[0]

    for s in seeds:
      _, data = _single(c, m, s, targets, d)
      out[m, s] = np.asarray(solve(data))
  return out, time.perf_counter() - t0


def run_python_loop(c):
  """Two seeds per width; returns ({(m, s): coeffs}, extrapolated seconds for every seed)."""
  d, seeds, targets = _inputs(c)
  out, total = {}, 0.0
  for m in c.widths:
    step = init = None
    times = []
    for s in seeds[:2]:
      t0 = time.perf_counter()
      alg, data = _single(c, m, s, targets, d)
      if step is None:
        step, init = jax.jit(alg.step), jax.jit(alg.init)
      st = init(data)
      for _ in range(c.steps):
        st = step(st, data)
      out[m, s] = np.asarray(alg.export(st, data)[0])
      times.append(time.perf_counter() - t0)
    total += times[0] + (len(seeds) - 1) * times[-1]
  return out, total


def compile_seconds(c):
  """Cold minus warm time of the engine's largest bucket program (compilation and tracing)."""
  d, seeds, targets = _inputs(c)
  ws = sweep.bucket_widths(c.widths)[-1]
  cells = [(m, s) for m in ws for s in seeds]
  alg = experiments.build_algorithm('gd', c, d, max(ws))
  data = experiments.run_data(c, cells, targets, max(ws), 'implicit')
  sweep.compiled.cache_clear()
  jax.clear_caches()
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    sweep.run_program(alg, data, cells, chunk_steps=c.steps)
    times.append(time.perf_counter() - t0)
  return times[0] - times[1], times[1]


def main(quick: bool = False):
  c = bench_config(quick)
  n_runs = len(c.widths) * c.num_seeds
  swept, t_sweep = run_sweep(c)
  one, t_one = run_one_at_a_time(c)
  loop, t_loop = run_python_loop(c)
  err = max(float(np.max(np.abs(swept[k] - one[k]))) for k in one)
  err_loop = max(float(np.max(np.abs(swept[k] - loop[k]))) for k in loop)
  cold_minus_warm, warm = compile_seconds(c)
  print(f'config: l=3 d=40 r=3 seeds={c.num_seeds} widths={c.widths} steps={c.steps} runs={n_runs} '
        f'devices={jax.device_count()} backend={jax.default_backend()}')
  print(f'max |coeff difference| sweep vs one-at-a-time {err:.2e}, vs python loop {err_loop:.2e}')
  print(f'sweep {t_sweep:.2f}s, one-at-a-time {t_one:.2f}s, '
        f'python loop {t_loop:.1f}s (extrapolated from 2 seeds per width)')
  print(f'largest bucket program: compile+trace {cold_minus_warm:.2f}s, warm run {warm:.2f}s')
  print(f'sweep_vs_one_at_a_time seconds={t_sweep:.2f} baseline={t_one:.2f} ratio={t_one / t_sweep:.2f}')
  print(f'sweep_vs_python_loop seconds={t_sweep:.2f} baseline={t_loop:.1f} ratio={t_loop / t_sweep:.2f}')
  return {'one_at_a_time': t_one / t_sweep, 'python_loop': t_loop / t_sweep}


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true')
  main(p.parse_args().quick)
