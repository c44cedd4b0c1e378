r"""overparam.decompose in memory against TensorLy's parafac: a warm call, a cold first call, a batch.

  pip install -r benchmarks/requirements.txt     # TensorLy: a benchmark-only dependency
  python -m benchmarks.decompose_bench [--quick]

Targets: l = 3, d = 10, rank r = 3 random unit components, all weights 1 (the package's
`random_unit` targets of seeds 0..63, as the sweeps draw them), given to both libraries as the same
dense float64 (10, 10, 10) array. Ours: overparam.decompose(t, 6) (beyond_lazy, width m = 6, its
defaults: eps 0.05, 2000 steps, float32, seed 0, the persistent compilation cache in a temporary
directory). TensorLy 0.10.0, numpy backend (float64), OpenBLAS pinned to one thread as in
peers_bench (its best case on these shared cores): parafac(t, r) with its defaults (svd init,
n_iter_max 100, tol 1e-8). Success: rel_error = ||T - T*||_F / ||T*||_F < 0.05 (ours: the float64
rel_error decompose reports; TensorLy's: of cp_to_tensor, in float64).

  warm   target 0: decompose(t, 6) called again (the compiled program cached: same shapes) against
         parafac(t, 3), calls interleaved, median of N (quick 40, full 200) -- the ratio's numbers; the
         same N calls back to back are printed too (a call right after another of the same library
         is faster: XLA's worker threads are awake, caches warm); and the median over the 64 targets
         of the per-target warm times (steps and ALS iterations vary by target).
         ratio (decompose_warm_vs_parafac) = parafac / decompose, interleaved (goal >= 0.5).
  cold   a fresh `python` to the first answer, each in its own subprocess, three ways: the
         compilation cache off (decompose(..., compilation_cache=False)), on with an empty cache
         directory, on with the directory the previous process filled (a warm disk cache). Split:
         interpreter start, `import overparam` (and `python -X importtime`'s largest imports),
         the first call (tracing, lowering, XLA compile or cache read: the union of jax.monitoring
         spans; the number of XLA programs compiled = '/jax/core/compile/backend_compile_duration'
         events, with the functions they belong to), then a second call in the same process.
         ratio (decompose_cold) = cache off / warm disk cache, process start to first answer.
  batch  decompose_many(64 tensors, 6) (one vmapped program; warm: its second call; the first call,
         compile included, is also printed) against a Python loop of parafac over the same 64
         tensors and a Python loop of warm decompose calls.  ratio (decompose_many_vs_parafac_loop)
         = parafac loop / decompose_many warm (goal >= 4); success rates of all three on the line.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# TensorLy's numpy backend calls OpenBLAS: one thread (see peers_bench). Before numpy loads.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

ORDER, DIM, RANK, WIDTH, N_TARGETS, EPS = 3, 10, 3, 6, 64, 0.05
EVENTS = common.EVENTS


def targets(n=N_TARGETS):
  """The dense float64 T* of seeds 0..n-1 (l=3, d=10, r=3 random unit components, weights 1)."""
  from overparam import config_lib, objectives, targets as targets_lib  # noqa: PLC0415
  c = config_lib.base_config()
  c.order, c.dims, c.rank = ORDER, (DIM,), RANK
  out = []
  for s in range(n):
    t = targets_lib.make_target(c, DIM, s, None)
    out.append(objectives.np_dense(np.asarray(t.coeffs, np.float64), np.asarray(t.factors, np.float64), ORDER))
  return np.stack(out)


def rel_error(t, t_star):
  return float(np.linalg.norm(t - t_star) / np.linalg.norm(t_star))


def parafac_solve(t):
  """(seconds, rel_error, iterations) of TensorLy's parafac(t, RANK)."""
  import tensorly as tl  # noqa: PLC0415
  from tensorly.decomposition import parafac  # noqa: PLC0415
  t0 = time.perf_counter()
  cp, errors = parafac(t, RANK, return_errors=True)
  secs = time.perf_counter() - t0
  return secs, rel_error(np.asarray(tl.cp_to_tensor(cp), np.float64), t), len(errors)


# ---- cold: a child process ----------------------------------------------------------------------

def cold_child(tensor_path: str, cache: str):
  """A fresh process to the first answer; prints one JSON line. cache: off | on."""
  t_start = time.perf_counter()
  t0 = time.perf_counter()
  import jax  # noqa: PLC0415
  jax_s = time.perf_counter() - t0
  spans, by_fn = {k: [] for k in EVENTS.values()}, {}

  def on_span(event, start, end, fun_name='?', **_):
    if event in EVENTS:
      spans[EVENTS[event]].append((start, end))
      if EVENTS[event] == 'backend':
        by_fn[fun_name] = by_fn.get(fun_name, 0) + 1

  hits = []
  jax.monitoring.register_event_time_span_listener(on_span)
  jax.monitoring.register_event_listener(lambda e, **_: hits.append(e) if e.startswith('/jax/compilation_cache/cache_') else None)
  t0 = time.perf_counter()
  import overparam  # noqa: PLC0415
  import_s = time.perf_counter() - t0
  t = np.load(tensor_path)
  t0 = time.perf_counter()
  res = overparam.decompose(t, WIDTH, compilation_cache=(cache == 'on'))
  first_s = time.perf_counter() - t0
  first_spans = {k: list(v) for k, v in spans.items()}
  n_backend = len(spans['backend'])
  t0 = time.perf_counter()
  again = overparam.decompose(t, WIDTH, compilation_cache=(cache == 'on'))
  second_s = time.perf_counter() - t0
  assert np.array_equal(again.factors, res.factors)
  print(json.dumps({
      'jax_import_s': jax_s, 'overparam_import_s': import_s, 'first_s': first_s, 'second_s': second_s,
      'to_answer_s': time.perf_counter() - t_start - second_s,
      'trace_s': common.union_seconds(first_spans['trace']), 'lower_s': common.union_seconds(first_spans['lower']),
      'backend_s': common.union_seconds(first_spans['backend']),
      'compile_s': common.union_seconds([x for v in first_spans.values() for x in v]),
      'programs': n_backend, 'by_fn': by_fn, 'hits': hits.count('/jax/compilation_cache/cache_hits'),
      'misses': hits.count('/jax/compilation_cache/cache_misses'),
      'extra_programs_second_call': len(spans['backend']) - n_backend,
      'rel_error': res.rel_error, 'steps': res.steps, 'factors': np.asarray(res.factors).tolist()}))


def cold_run(tensor_path: str, cache: str, cache_dir: str) -> dict:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
  env['PYTHONPATH'] = common.ROOT + os.pathsep + env.get('PYTHONPATH', '')
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.decompose_bench', '--cold-child', tensor_path, cache],
                        cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=600)
  wall = time.perf_counter() - t0
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f'cold child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}')
  out = json.loads(lines[-1])
  out['process_s'] = wall  # process start to exit (the child's second call included)
  return out


def import_profile(top: int = 7):
  """(cumulative seconds of `import overparam`, [(package, seconds)] by top-level package: the sum of
  the self times of its modules, the largest first) from `python -X importtime` in a fresh process."""
  env = dict(os.environ, PYTHONPATH=common.ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'import overparam'], cwd=common.ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  total, by_pkg = float('nan'), {}
  for line in proc.stderr.splitlines():
    if not line.startswith('import time:') or 'cumulative' in line:
      continue
    self_us, cum_us, name = line[len('import time:'):].split('|')
    if name.strip() == 'overparam' and len(name) - len(name.lstrip()) == 1:
      total = int(cum_us) / 1e6
    pkg = name.strip().split('.')[0]
    by_pkg[pkg] = by_pkg.get(pkg, 0.0) + int(self_us) / 1e6
  return total, sorted(by_pkg.items(), key=lambda x: -x[1])[:top]


# ---- the parent ---------------------------------------------------------------------------------

def main(quick: bool = False):
  common.header('decompose_bench', quick)
  import jax  # noqa: PLC0415
  import tensorly  # noqa: PLC0415
  import overparam  # noqa: PLC0415
  from overparam import compile_cache  # noqa: PLC0415
  tmp = tempfile.mkdtemp(prefix='decompose_bench_')
  compile_cache.configure(True, os.path.join(tmp, 'cache_parent'))  # not the user's cache directory
  ts = targets()
  n_warm = 40 if quick else 200
  # ---- warm call on target 0, interleaved
  t = ts[0]
  first = time.perf_counter()
  ref = overparam.decompose(t, WIDTH)
  first = time.perf_counter() - first
  ours, theirs = [], []
  for _ in range(n_warm):
    t0 = time.perf_counter()
    overparam.decompose(t, WIDTH)
    ours.append(time.perf_counter() - t0)
    theirs.append(parafac_solve(t)[0])
  _, pf_err0, pf_iters0 = parafac_solve(t)
  d_med, p_med = statistics.median(ours), statistics.median(theirs)
  b2b_d, b2b_p = [], []  # back to back: each library called N times in a row (warm caches, threads awake)
  for _ in range(n_warm):
    t0 = time.perf_counter()
    overparam.decompose(t, WIDTH)
    b2b_d.append(time.perf_counter() - t0)
  for _ in range(n_warm):
    b2b_p.append(parafac_solve(t)[0])
  load_warm = os.getloadavg()[0]
  # ---- every target: warm decompose and parafac per target (loops), then decompose_many
  per_d, per_p, errs_d, errs_p, steps_d, iters_p = [], [], [], [], [], []
  for x in ts:
    overparam.decompose(x, WIDTH)  # the program is compiled already: this only warms the target's path
  loop_d0 = time.perf_counter()
  for x in ts:
    t0 = time.perf_counter()
    r = overparam.decompose(x, WIDTH)
    per_d.append(time.perf_counter() - t0)
    errs_d.append(r.rel_error if r.rel_error is not None else np.inf)
    steps_d.append(r.steps)
  loop_d = time.perf_counter() - loop_d0
  loop_p0 = time.perf_counter()
  for x in ts:
    secs, err, it = parafac_solve(x)
    per_p.append(secs)
    errs_p.append(err)
    iters_p.append(it)
  loop_p = time.perf_counter() - loop_p0
  t0 = time.perf_counter()
  many = overparam.decompose_many(ts, WIDTH)
  many_first = time.perf_counter() - t0
  many_times = []
  for _ in range(3 if quick else 7):
    t0 = time.perf_counter()
    again = overparam.decompose_many(ts, WIDTH)
    many_times.append(time.perf_counter() - t0)
  many_warm = statistics.median(many_times)
  same = all(np.array_equal(a.factors, b.factors) for a, b in zip(many, again))
  errs_m = np.array([r.rel_error if r.rel_error is not None else np.inf for r in many])
  match_one = max(float(np.max(np.abs(a.factors - b.factors))) for a, b in zip(many, [overparam.decompose(x, WIDTH) for x in ts]))
  load_batch = os.getloadavg()[0]
  errs_d, errs_p = np.array(errs_d), np.array(errs_p)
  # ---- cold
  tensor_path = os.path.join(tmp, 't0.npy')
  np.save(tensor_path, t)
  cache_dir = os.path.join(tmp, 'cache_child')
  cold = {'off': cold_run(tensor_path, 'off', os.path.join(tmp, 'cache_unused')),
          'cache_empty': cold_run(tensor_path, 'on', cache_dir),
          'cache_warm': cold_run(tensor_path, 'on', cache_dir)}
  for k, v in cold.items():
    assert np.array_equal(np.asarray(v['factors'], np.float32), ref.factors), f'{k}: other numbers'
  imp_total, imp_top = import_profile()
  load_cold = os.getloadavg()[0]

  print(f'targets: l={ORDER} d={DIM} r={RANK} random unit components (weights 1), seeds 0..{N_TARGETS - 1}, dense '
        f'float64; ours decompose(t, {WIDTH}) beyond_lazy defaults (eps {EPS}, float32); TensorLy '
        f'{tensorly.__version__} parafac(t, {RANK}) defaults, numpy backend, OPENBLAS_NUM_THREADS='
        f'{os.environ.get("OPENBLAS_NUM_THREADS")}')
  print(f'warm (target 0, {n_warm} interleaved calls, load {load_warm:.1f}): decompose median {d_med * 1e3:.3f} ms '
        f'(steps {ref.steps}, rel_error {ref.rel_error:.4f}, {ref.status}; first call in this process '
        f'{first:.2f} s), parafac median {p_med * 1e3:.3f} ms ({pf_iters0} iterations, rel_error {pf_err0:.1e}); '
        f'back to back: decompose {statistics.median(b2b_d) * 1e3:.3f} ms, parafac {statistics.median(b2b_p) * 1e3:.3f} ms')
  print(f'per target (warm, one call each): decompose median {np.median(per_d) * 1e3:.3f} ms (steps median '
        f'{int(np.median(steps_d))}, max {max(steps_d)}), parafac median {np.median(per_p) * 1e3:.3f} ms '
        f'(iterations median {int(np.median(iters_p))}, max {max(iters_p)}); median of per-target ratios '
        f'{np.median(np.array(per_p) / np.array(per_d)):.2f}')
  print(f'batch of {N_TARGETS} (load {load_batch:.1f}): decompose_many warm {many_warm * 1e3:.1f} ms (first call '
        f'{many_first:.2f} s, compile included; max steps {max(r.steps for r in many)}), loop of parafac '
        f'{loop_p * 1e3:.1f} ms, loop of decompose {loop_d * 1e3:.1f} ms; decompose_many = decompose per tensor: '
        f'max |factor difference| {match_one:.1e}; repeated calls identical {same}')
  print(f'success (rel_error < {EPS}): decompose {np.mean(errs_d < EPS):.2f} (max rel_error {errs_d.max():.3f}), '
        f'decompose_many {np.mean(errs_m < EPS):.2f}, parafac {np.mean(errs_p < EPS):.2f} '
        f'(max rel_error {errs_p.max():.1e})')
  print(f'cold (fresh processes, load {load_cold:.1f}): `import overparam` {imp_total:.2f} s by -X importtime, largest '
        f'top-level imports: ' + ', '.join(f'{n} {c:.2f}' for n, c in imp_top))
  print(f'  {"cache":<12}{"process":>8}{"to answer":>10}{"import jax":>11}{"+overparam":>11}{"1st call":>9}'
        f'{"trace":>7}{"lower":>7}{"backend":>8}{"programs":>9}{"hits":>5}{"2nd call":>9}  compiled functions')
  for k, v in cold.items():
    fns = ', '.join(f'{f} x{n}' if n > 1 else f for f, n in sorted(v['by_fn'].items(), key=lambda x: -x[1]))
    print(f'  {k:<12}{v["process_s"]:>8.2f}{v["to_answer_s"]:>10.2f}{v["jax_import_s"]:>11.2f}'
          f'{v["overparam_import_s"]:>11.2f}{v["first_s"]:>9.2f}{v["trace_s"]:>7.2f}{v["lower_s"]:>7.2f}'
          f'{v["backend_s"]:>8.2f}{v["programs"]:>9}{v["hits"]:>5}{v["second_s"] * 1e3:>7.1f}ms  {fns}')
  print(f'decompose_warm_vs_parafac l={ORDER} d={DIM} r={RANK} m={WIDTH} target=seed0 decompose={d_med * 1e3:.3f}ms '
        f'parafac={p_med * 1e3:.3f}ms load={load_warm:.1f} ratio={p_med / d_med:.2f}', flush=True)
  print(f'decompose_many_vs_parafac_loop n={N_TARGETS} decompose_many={many_warm * 1e3:.1f}ms '
        f'parafac_loop={loop_p * 1e3:.1f}ms decompose_loop={loop_d * 1e3:.1f}ms (vs decompose loop '
        f'{loop_d / many_warm:.1f}x) success decompose_many={np.mean(errs_m < EPS):.2f} decompose={np.mean(errs_d < EPS):.2f} '
        f'parafac={np.mean(errs_p < EPS):.2f} load={load_batch:.1f} ratio={loop_p / many_warm:.2f}', flush=True)
  co, cw = cold['off'], cold['cache_warm']
  print(f'decompose_cold first answer (process start) cache_off={co["to_answer_s"]:.2f}s (import {co["overparam_import_s"]:.2f}s, '
        f'{co["programs"]} programs compiled in {co["backend_s"]:.2f}s) cache_empty={cold["cache_empty"]["to_answer_s"]:.2f}s '
        f'cache_warm={cw["to_answer_s"]:.2f}s ({cw["hits"]} cache reads, {cw["misses"]} misses) load={load_cold:.1f} '
        f'ratio={co["to_answer_s"] / cw["to_answer_s"]:.2f}', flush=True)
  import shutil  # noqa: PLC0415
  shutil.rmtree(tmp, ignore_errors=True)
  return p_med / d_med


if __name__ == '__main__':
  if len(sys.argv) > 1 and sys.argv[1] == '--cold-child':
    cold_child(sys.argv[2], sys.argv[3])
  else:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true')
    main(p.parse_args().quick)
