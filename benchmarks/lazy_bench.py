r"""Lazy model: GD on the `jax.linearize` model versus recomputing `jax.jvp` at W0 every step.

  python -m benchmarks.lazy_bench [--quick]

The same runs (l = 3, cp, random unit targets of rank 3, Nesterov momentum 0.9, step
1/lambda_max(J^T J)) trained three ways, each in the engine's compiled program (vmapped over the
runs, `lax.scan` over the steps, `engine.compiled`), each in its own subprocess so that its peak
resident memory is its own:

  linearize        `linearized.Lazy` as the package runs it: T_lin(W) = T(W0) + lin(W - W0) with
                   `_, lin = jax.linearize(T, W0)` (traced inside the step; XLA may hoist the
                   W0-only part out of the scan loop)
  jvp_each_step    the neural-tangents way (`nt.linearize`): T_lin(W) = f0 + jvp(T, (W0,), (W - W0,))
                   with both f0 and the tangent recomputed at every step
  linearize_once   informative: `jax.linearize` once per chunk, outside the scan, its linear map
                   closed over by the scanned step (the residuals become loop constants)

Reported per arm: time per step (min of 3 timed chunks, compilation excluded), XLA's buffer
accounting of the compiled chunk (arguments + outputs + temporaries, from
`Compiled.memory_analysis()`), and the peak RSS of the subprocess. The arms must agree on the
trained parameters (printed: max abs difference against `linearize`).
ratio = jvp_each_step time per step / linearize time per step.

  python -m benchmarks.lazy_bench --part=grid [--quick]

lazy_exact over a 14-width geometric grid (l = 3, cp, symmetric init, float64, 4 seeds; full: d = 16,
widths 5..64, the main job's grid; quick: d = 10, widths 4..40), three ways, each the engine's
compiled functions (init, dense_model, extras: what a program computes), timed in this process
after a warm-up call (compilation excluded, min of 3):

  largest_alone    the per-width path (min_norm_solve: eigendecomposition of the Gram matrix) at the
                   grid's largest width only, one run per seed
  per_width_sum    the per-width path at every width, in the engine's width buckets (largest <= 2x
                   smallest), one run per (width, seed): what the engine ran before the grid path
  grid             LazyExact(widths=grid): one run per seed, one factorization for all 14 widths
The grid's tangent ranks must equal the per-width path's and its rel_errors agree to 1e-8 (printed).
ratio (lazy_exact_grid_vs_largest) = grid time / largest_alone time (goal: <= 2); the line also
gives per_width_sum / grid.
"""

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time

# XLA's CPU LAPACK kernels (eigh, cholesky, qr) call the OpenBLAS that numpy/scipy load; with its
# default thread pool, concurrent calls from XLA's threads deadlocked here (the per-width path's
# batched eigh, 3 of 3 attempts, load ~6). One OpenBLAS thread for every arm; XLA's own thread pool
# (the GEMMs) is unaffected. Set before numpy loads.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from benchmarks import common  # noqa: E402

FULL = dict(order=3, dim=24, width=128, runs=16, steps=300)
QUICK = dict(order=3, dim=16, width=64, runs=8, steps=100)
ARMS = ('linearize', 'jvp_each_step', 'linearize_once')


def _setup(order, dim, width, runs, steps):
  """(task, the program's stacked algorithm value, host RunData) of the engine's lazy program."""
  from overparam import config_lib, planner, targets  # noqa: PLC0415
  c = config_lib.base_config()
  c.algorithms, c.order, c.dims, c.rank, c.widths = ('lazy',), order, (dim,), 3, (width,)
  c.num_seeds, c.steps, c.chunk_steps, c.eps = runs, steps, steps, 1e-30
  c.lazy.momentum = 0.9
  tg = {s: targets.make_target(c, dim, s, None) for s in range(runs)}
  (prog,) = planner.plan(c)
  cells = prog.cells(range(runs))
  return prog.task, planner.run_algorithm(prog, cells), planner.run_data(prog, cells, tg)


def _jvp_class():
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from overparam import core, linearized, objectives  # noqa: PLC0415

  @core.register
  @dataclasses.dataclass(frozen=True)
  class LazyJvp(linearized.Lazy):
    """linearized.Lazy with the neural-tangents linearization: jvp at W0 recomputed at every step."""

    def step(self, task, state, data):
      t_star = objectives.dense_target(data.target, task.order)

      def loss(p):
        f0, jd = jax.jvp(lambda q: self.model(task, q, data), (state.params0,), (linearized._sub(p, state.params0),))
        r = f0 + jd - t_star
        dl = 0.5 * jnp.sum(r * r)
        return dl, dl

      out, grads = jax.value_and_grad(loss, has_aux=True)(state.params)
      return core.guarded_update(task, state, out, grads, self._opt(task, state.aux['lr']), data)
  return LazyJvp


def _linearize_once_chunk(task, steps):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from overparam import core, linearized, objectives  # noqa: PLC0415

  def chunk(alg, state, data):
    _, lin = alg.linearize(task, state.params0, data)
    t_star = objectives.dense_target(data.target, task.order)

    def body(s, _):
      def loss(p):
        r = s.aux['t0'] + lin(linearized._sub(p, s.params0)) - t_star
        dl = 0.5 * jnp.sum(r * r)
        return dl, dl
      out, grads = jax.value_and_grad(loss, has_aux=True)(s.params)
      return core.guarded_update(task, s, out, grads, alg._opt(task, s.aux['lr']), data), None
    return jax.lax.scan(body, state, None, length=steps)[0], {}
  return chunk


def child(arm: str, quick: bool, save_dir: str):
  """One arm in this process; prints one JSON line."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  from overparam import engine  # noqa: PLC0415
  size = QUICK if quick else FULL
  task, alg, data = _setup(**size)
  sharding = NamedSharding(engine.run_mesh(), P('runs'))
  if arm == 'jvp_each_step':
    alg = _jvp_class()(**{f.name: getattr(alg, f.name) for f in dataclasses.fields(alg)})
  init, chunk, _ = engine.compiled(jax.tree.structure(alg), task, task.steps, sharding, 0)
  if arm == 'linearize_once':
    chunk = jax.jit(jax.vmap(_linearize_once_chunk(task, task.steps)), out_shardings=sharding, donate_argnums=1)
  galg, g = engine.to_global(alg, sharding), engine.to_global(data, sharding)
  compiled = chunk.lower(galg, init(galg, g), g).compile()
  mem = compiled.memory_analysis()
  times = []
  for _ in range(3):
    st = jax.block_until_ready(init(galg, g))
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(galg, st, g))[0]
    times.append(time.perf_counter() - t0)
  factors = np.asarray(out.params['factors'])
  np.save(os.path.join(save_dir, f'{arm}.npy'), factors)
  print(json.dumps({
      'arm': arm, 'step_s': min(times) / task.steps, 'xla_bytes': int(
          mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes),
      'temp_bytes': int(mem.temp_size_in_bytes), 'peak_rss': common.peak_rss_bytes(),
      'rel_error_mean': float(np.mean(np.asarray(out.rel_err)))}))


def main(quick: bool = False):
  common.header('lazy_bench', quick)
  import numpy as np  # noqa: PLC0415
  size = QUICK if quick else FULL
  tmp = tempfile.TemporaryDirectory()
  res = {arm: common.run_json_subprocess('benchmarks.lazy_bench', ['--arm', arm, '--save', tmp.name]
                                         + (['--quick'] if quick else [])) for arm in ARMS}
  ref = np.load(os.path.join(tmp.name, 'linearize.npy'))
  print(f'  l={size["order"]} d={size["dim"]} m={size["width"]} runs={size["runs"]} steps={size["steps"]} '
        f'(dimension count C(d+l-1, l)/d = {math.ceil(math.comb(size["dim"] + size["order"] - 1, size["order"]) / size["dim"])})')
  print(f'  {"arm":<16}{"ms/step":>9}{"us/run-step":>13}{"XLA bytes":>12}{"XLA temp":>11}{"peak RSS":>11}  max|dW| vs linearize')
  for arm, r in res.items():
    diff = float(np.max(np.abs(np.load(os.path.join(tmp.name, f'{arm}.npy')) - ref)))
    print(f'  {arm:<16}{r["step_s"] * 1e3:>9.3f}{r["step_s"] / size["runs"] * 1e6:>13.1f}'
          f'{common.fmt_bytes(r["xla_bytes"]):>12}{common.fmt_bytes(r["temp_bytes"]):>11}'
          f'{common.fmt_bytes(r["peak_rss"]):>11}  {diff:.1e}')
  lin, jvp = res['linearize'], res['jvp_each_step']
  ratio = jvp['step_s'] / lin['step_s']
  print(f'lazy_linearize_vs_jvp l={size["order"]} d={size["dim"]} m={size["width"]} runs={size["runs"]} '
        f'linearize={lin["step_s"] * 1e3:.3f}ms/step jvp={jvp["step_s"] * 1e3:.3f}ms/step '
        f'rss linearize={common.fmt_bytes(lin["peak_rss"])} jvp={common.fmt_bytes(jvp["peak_rss"])} '
        f'ratio={ratio:.2f}', flush=True)
  tmp.cleanup()
  return ratio


GRID_FULL = dict(order=3, dim=16, lo=5, hi=64, seeds=4)
GRID_QUICK = dict(order=3, dim=10, lo=4, hi=40, seeds=4)


def grid_widths(lo: int, hi: int):
  import numpy as np  # noqa: PLC0415
  return tuple(int(w) for w in np.unique(np.round(np.geomspace(lo, hi, 14))))


def main_grid(quick: bool = False):
  """lazy_exact: the whole grid from one factorization against the largest width alone."""
  import jax  # noqa: PLC0415
  jax.config.update('jax_enable_x64', True)  # before the backend starts (common.header starts it)
  common.header('lazy_bench (grid)', quick)
  import numpy as np  # noqa: PLC0415
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  from overparam import config_lib, engine, planner, targets as targets_lib  # noqa: PLC0415
  size = GRID_QUICK if quick else GRID_FULL
  widths = grid_widths(size['lo'], size['hi'])
  order, dim, seeds = size['order'], size['dim'], list(range(size['seeds']))
  c = config_lib.base_config()
  c.algorithms, c.order, c.dims, c.rank, c.widths, c.num_seeds = ('lazy_exact',), order, (dim,), 3, widths, len(seeds)
  c.x64, c.init_scale, c.lazy.symmetric_init = True, 0.3, True
  sharding = NamedSharding(engine.run_mesh(), P('runs'))
  targets = {s: targets_lib.make_target(c, dim, s, None) for s in seeds}
  (grid_prog,) = planner.plan(c)  # lazy_exact: the whole grid is one program (one run per seed)
  per_width = config_lib.algorithm_of(c, 'lazy_exact')  # widths=(): the per-width path

  def program(prog, runs):
    """(seconds, (state, exported, dense, extras)) of init + finish on the runs, compiled beforehand."""
    alg = engine.to_global(planner.run_algorithm(prog, runs), sharding)
    init, _, finish = engine.compiled(jax.tree.structure(alg), prog.task, 1, sharding, 0)
    g = engine.to_global(planner.run_data(prog, runs, targets), sharding)
    f = lambda: jax.block_until_ready((lambda st: (st,) + tuple(finish(alg, st, g)))(init(alg, g)))
    f()
    times = []
    for _ in range(3):
      t0 = time.perf_counter()
      out = f()
      times.append(time.perf_counter() - t0)
    return min(times), jax.tree.map(np.asarray, out)

  def bucket_program(ws):
    return grid_prog._replace(widths=tuple(ws), one=False, algs=(per_width,))

  big = widths[-1]
  t_alone, _ = program(bucket_program([big]), [(big, s, 0) for s in seeds])
  t_sum, ref = 0.0, {}
  for ws in planner.bucket_widths(widths):
    cells = [(m, s, 0) for m in ws for s in seeds]
    t, (st, _, _, ex) = program(bucket_program(ws), cells)
    t_sum += t
    ref.update({(m, s): (float(st.rel_err[i]), int(ex['tangent_rank'][i])) for i, (m, s, _) in enumerate(cells)})
  t_grid, (st, _, _, ex) = program(grid_prog, [(big, s, 0) for s in seeds])
  worst_rel, rank_ok = 0.0, True
  for i, s in enumerate(seeds):
    for j, m in enumerate(widths):
      worst_rel = max(worst_rel, abs(float(st.rel_err[i, j]) - ref[(m, s)][0]))
      rank_ok &= int(ex['tangent_rank'][i, j]) == ref[(m, s)][1]
  n = math.comb(dim + order - 1, order)
  print(f'  l={order} d={dim} N=C(d+l-1,l)={n} widths={list(widths)} seeds={len(seeds)} float64, symmetric init')
  print(f'  {"arm":<16}{"seconds":>9}')
  for name, t in (('largest_alone', t_alone), ('per_width_sum', t_sum), ('grid', t_grid)):
    print(f'  {name:<16}{t:>9.3f}')
  print(f'  grid vs per-width path: tangent ranks {"equal" if rank_ok else "DIFFER"} at every (width, seed); '
        f'max |rel_error difference| {worst_rel:.1e}')
  print(f'lazy_exact_grid_vs_largest l={order} d={dim} widths={len(widths)} ({widths[0]}..{big}) seeds={len(seeds)} '
        f'grid={t_grid:.3f}s largest_alone={t_alone:.3f}s per_width_sum={t_sum:.3f}s '
        f'(per_width_sum/grid={t_sum / t_grid:.1f}) ranks_equal={rank_ok} max_rel_diff={worst_rel:.1e} '
        f'ratio={t_grid / t_alone:.2f}', flush=True)
  return t_grid / t_alone


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true')
  p.add_argument('--part', choices=('linearize', 'grid'), default='linearize',
                 help='linearize: lazy GD, jax.linearize vs jvp; grid: lazy_exact, one factorization per grid')
  p.add_argument('--arm', choices=ARMS, help='internal: run one arm and print JSON')
  p.add_argument('--save', help='internal: directory for the arm\'s trained factors')
  a = p.parse_args()
  if a.arm:
    child(a.arm, a.quick, a.save)
  elif a.part == 'grid':
    main_grid(a.quick)
  else:
    main(a.quick)
