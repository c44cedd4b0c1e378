r"""A hyperparameter axis as one program: programs compiled and wall time, against one program per value.

  python -m benchmarks.axes_bench            # configs/alpha_scaling.py's gd arm (13 alphas, 4 seeds, 4000 steps)
  python -m benchmarks.axes_bench --quick    # 6 alphas, 2 seeds, 600 steps

The algorithm's numeric hyperparameters are traced leaves (overparam/core.py), so the planner runs a
sweep axis over one of them (here config.alphas, gd's alpha) as a vmapped axis of ONE program per width
bucket (planner.plan). The baseline is what a static hyperparameter costs: one program per value, each
compiled anew (the value a constant of the program), run one after the other; emulated in this same
script by running each value as its own config with the engine's compiled programs dropped before each
(the small eager operations that build targets stay cached, as they would). Both write a workdir with
the persistent compilation cache off; compilations are counted by JAX's backend-compile event.
The rows agree: every (alpha, seed) cell has the same status and steps, and rel_error within 1e-6
relative (at alpha = 1 the one-program run evaluates the 2m-component alpha model, the per-value run
the plain m-component model: the same tensor, rounded differently).

Prints one line ending in ratio=<per-value wall / one-program wall>.
"""

import argparse
import json
import os
import tempfile
import time

import jax
from jax import monitoring

from benchmarks import common
from overparam import api, compile_cache, config_lib, engine, experiments, planner

jax.config.update('jax_enable_x64', True)

_COMPILES = []
monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: _COMPILES.append(secs) if event == '/jax/core/compile/backend_compile_duration' else None)


def config(quick: bool):
  c = api.load_config(os.path.join(common.ROOT, 'configs/alpha_scaling.py'))
  c.algorithms = ('gd',)
  if quick:
    c.alphas, c.num_seeds, c.steps, c.chunk_steps = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), 2, 600, 300
  c.checkpoint_every_s = 1e9
  return c


def rows_of(wd):
  with open(os.path.join(wd, 'results.jsonl')) as f:
    return {(r['alpha'], r['seed']): r for r in map(json.loads, f)}


def timed_run(c, wd):
  n0 = len(_COMPILES)
  t0 = time.perf_counter()
  experiments.run(c, wd, figures=False)
  return time.perf_counter() - t0, len(_COMPILES) - n0, sum(_COMPILES[n0:])


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--quick', action='store_true')
  args = p.parse_args()
  compile_cache.configure(False)
  c = config(args.quick)
  progs = planner.plan(c)
  tmp = tempfile.mkdtemp(prefix='axes-bench-')
  one_wall, one_compiles, one_compile_s = timed_run(c, os.path.join(tmp, 'one'))
  one = rows_of(os.path.join(tmp, 'one'))
  per_wall = per_compiles = per_compile_s = 0.0
  per = {}
  for a in c.alphas:
    engine.compiled.cache_clear()  # a static hyperparameter: every value's programs are compiled anew
    ca = c.copy_and_resolve_references()
    ca.alphas, ca.alpha = (), float(a)
    config_lib.validate(ca)
    w, n, s = timed_run(ca, os.path.join(tmp, f'a{a:g}'))
    per_wall, per_compiles, per_compile_s = per_wall + w, per_compiles + n, per_compile_s + s
    per.update(rows_of(os.path.join(tmp, f'a{a:g}')))
  worst = 0.0
  for k, r in one.items():
    q = per[k]
    assert r['status'] == q['status'] and r['steps'] == q['steps'], (k, r['status'], q['status'])
    if r['rel_error'] is not None:
      worst = max(worst, abs(r['rel_error'] - q['rel_error']) / abs(q['rel_error']))
  assert worst < 1e-6, worst
  print(f'# {common.machine()}')
  print(f'# one program: {len(progs)} planned, {one_compiles} XLA compiles ({one_compile_s:.1f} s), wall {one_wall:.1f} s')
  print(f'# per value:   {len(c.alphas)} programs, {per_compiles} XLA compiles ({per_compile_s:.1f} s), '
        f'wall {per_wall:.1f} s; max relative rel_error difference {worst:.1e}')
  print(f'alpha_axis_one_program alphas={len(c.alphas)} seeds={c.num_seeds} steps={c.steps} '
        f'compiles one={one_compiles} per_value={per_compiles} wall one={one_wall:.1f}s per_value={per_wall:.1f}s '
        f'ratio={per_wall / one_wall:.2f}')


if __name__ == '__main__':
  main()
