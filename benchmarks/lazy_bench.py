r"""Lazy model: GD on the `jax.linearize` model versus recomputing `jax.jvp` at W0 every step.

  python -m benchmarks.lazy_bench [--quick]

The same runs (l = 3, cp, random unit targets of rank 3, Nesterov momentum 0.9, step
1/lambda_max(J^T J)) trained three ways, each in the engine's compiled program (vmapped over the
runs, `lax.scan` over the steps, `sweep.compiled`), each in its own subprocess so that its peak
resident memory is its own:

  linearize        `lazy.Lazy` as the package runs it: T_lin(W) = T(W0) + lin(W - W0) with
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
"""

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time

from benchmarks import common

FULL = dict(order=3, dim=24, width=128, runs=16, steps=300)
QUICK = dict(order=3, dim=16, width=64, runs=8, steps=100)
ARMS = ('linearize', 'jvp_each_step', 'linearize_once')


def _setup(order, dim, width, runs, steps):
  from overparam import config_lib, experiments  # noqa: PLC0415
  c = config_lib.base_config()
  c.algorithms, c.order, c.dims, c.rank, c.widths = ('lazy',), order, (dim,), 3, (width,)
  c.num_seeds, c.steps, c.chunk_steps, c.eps = runs, steps, steps, 1e-30
  c.lazy.momentum = 0.9
  tg = {s: experiments.make_target(c, dim, s, None) for s in range(runs)}
  cells = [(width, s) for s in range(runs)]
  return c, experiments.build_algorithm('lazy', c, dim, width), experiments.run_data(c, cells, tg, width, 'dense')


def _jvp_class():
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from overparam import algorithms, lazy  # noqa: PLC0415

  @dataclasses.dataclass(frozen=True)
  class LazyJvp(lazy.Lazy):
    """lazy.Lazy with the neural-tangents linearization: jvp at W0 recomputed at every step."""

    def step(self, state, data):
      t_star = lazy.dense_target(data.target, self.spec.order)

      def loss(p):
        f0, jd = jax.jvp(lambda q: self.model(q, data), (state.params0,), (lazy._sub(p, state.params0),))
        r = f0 + jd - t_star
        dl = 0.5 * jnp.sum(r * r)
        return dl, dl

      out, grads = jax.value_and_grad(loss, has_aux=True)(state.params)
      return algorithms.guarded_update(state, out, grads, self._opt(state.aux['lr']), self.eps, self.steps,
                                       data.target_sq)
  return LazyJvp


def _linearize_once_chunk(alg, steps):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from overparam import algorithms, lazy  # noqa: PLC0415

  def chunk(state, data):
    _, lin = alg.linearize(state.params0, data)
    t_star = lazy.dense_target(data.target, alg.spec.order)

    def body(s, _):
      def loss(p):
        r = s.aux['t0'] + lin(lazy._sub(p, s.params0)) - t_star
        dl = 0.5 * jnp.sum(r * r)
        return dl, dl
      out, grads = jax.value_and_grad(loss, has_aux=True)(s.params)
      return algorithms.guarded_update(s, out, grads, alg._opt(s.aux['lr']), alg.eps, alg.steps,
                                       data.target_sq), None
    return jax.lax.scan(body, state, None, length=steps)[0], {}
  return chunk


def child(arm: str, quick: bool, save_dir: str):
  """One arm in this process; prints one JSON line."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  from overparam import sweep  # noqa: PLC0415
  size = QUICK if quick else FULL
  c, alg, data = _setup(**size)
  sharding = NamedSharding(sweep.run_mesh(), P('runs'))
  if arm == 'jvp_each_step':
    alg = _jvp_class()(**{f.name: getattr(alg, f.name) for f in dataclasses.fields(alg)})
  init, chunk, *_ = sweep.compiled(alg, c.steps, sharding, 0)
  if arm == 'linearize_once':
    chunk = jax.jit(jax.vmap(_linearize_once_chunk(alg, c.steps)), out_shardings=sharding, donate_argnums=0)
  g = sweep.to_global(data, sharding)
  compiled = chunk.lower(init(g), g).compile()
  mem = compiled.memory_analysis()
  times = []
  for _ in range(3):
    st = jax.block_until_ready(init(g))
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(st, g))[0]
    times.append(time.perf_counter() - t0)
  factors = np.asarray(out.params['factors'])
  np.save(os.path.join(save_dir, f'{arm}.npy'), factors)
  print(json.dumps({
      'arm': arm, 'step_s': min(times) / c.steps, 'xla_bytes': int(
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


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true')
  p.add_argument('--arm', choices=ARMS, help='internal: run one arm and print JSON')
  p.add_argument('--save', help='internal: directory for the arm\'s trained factors')
  a = p.parse_args()
  if a.arm:
    child(a.arm, a.quick, a.save)
  else:
    main(a.quick)
