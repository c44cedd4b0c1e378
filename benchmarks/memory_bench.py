r"""Memory: peak resident memory of the largest default program, and the largest d per order that
fits in 24 GiB for each algorithm, from a memory model validated against measured RSS.

  python -m benchmarks.memory_bench                   # model validated at 2 sizes x 5 algorithms,
                                                      # d_max table for l = 3, 4 (~5 minutes)
  python -m benchmarks.memory_bench --quick           # one (the smaller) validation size each
  python -m benchmarks.memory_bench --part=largest    # every shipped config's largest program by the
                                                      # model; the largest one run and measured (~3 min)

Method.
  Measured: `experiments.run` (the launcher's whole path: targets, one program, finalize with its
  float64 host evaluation, results, figures) in a fresh subprocess; peak RSS = ru_maxrss.
  Model: predicted peak RSS of one program =
      base                     RSS of the same subprocess running a tiny program (interpreter, jax,
                               XLA runtime, matplotlib), measured in this run
    + host copies              the host RunData, the host copy of the final state and of the
                               exported/dense model (sweep.run_program's to_host)
    + max(device peak,         max over the program's compiled functions (init, chunk, export,
                               dense_model, extras) of XLA's own buffer accounting
                               (Compiled.memory_analysis: arguments + outputs + temporaries -
                               donated aliases); compiled from abstract shapes, nothing allocated
          float64 evaluation)  finalize's rel_error, one run at a time, after the program's device
                               buffers are freed: 3 dense float64 (d,)^l arrays when it evaluates
                               densely (lazy models, or d^l <= 2^24), else ~3 m d float64 (factors,
                               recovery, movement)
  Validated at two sizes per algorithm (measured / predicted printed). The model leaves out what the
  XLA CPU runtime allocates beyond its buffer assignment (YNNPACK/XNNPACK fusion scratch: with
  those fusions disabled a lazy l = 4 chunk's RSS growth matched XLA's accounting; with them it was
  1.2 GB over) and allocator slack, so it can underestimate: the largest d that fits in 24 GiB is
  found on the model scaled by the worst measured/predicted ratio of the validation (compile-only
  probes, a secant search in log d - log bytes, bracketed by consecutive probes), one run per
  program (a program of n runs needs about n times the per-run part).
Widths: gd and beyond_lazy m = 64 (their widths do not grow with d); lazy and lazy_exact at the
dimension count m = ceil(C(d+l-1, l) / d), the smallest width whose tangent space can span the
symmetric tensors (the width the lazy-threshold experiments need at that d). dtypes as the shipped
configs: gd, beyond_lazy float32; lazy, lazy_exact float64 (configs/lazy_threshold*.py set x64).
gd_dense is gd with config.loss = dense (what a dense target file forces).

A sweep runs its programs one after another and frees each program's buffers before the next, so
its peak RSS is that of its largest program: --part=largest estimates the largest program of every
shipped config (configs/*.py: top width bucket at the largest d, all seeds and ranks of its rows)
and runs the largest one that fits this machine for real (plus configs/default.py's largest),
iterative algorithms cut to 5 steps and lazy's power iteration to 5 iterations (memory does not
grow with either).

ratio (the run.py lines) = measured / predicted peak RSS: worst over the validation sizes
(`memory_model`), and of the largest shipped program (`largest_default_program`); 1 = exact model,
> 1 = the model underestimates.
"""

import argparse
import json
import math
import os
import tempfile

import numpy as np

from benchmarks import common

LIMIT = 24 * 2 ** 30
ALGS = ('gd', 'gd_dense', 'beyond_lazy', 'lazy', 'lazy_exact')
VALIDATE = {  # (order, d, runs per program)
    'gd': [(3, 200_000, 1), (3, 600_000, 1)],
    'gd_dense': [(3, 128, 1), (3, 256, 1)],
    'beyond_lazy': [(3, 200_000, 1), (3, 600_000, 1)],
    'lazy': [(3, 64, 1), (4, 16, 8)],
    'lazy_exact': [(3, 20, 1), (3, 26, 1)],
}


def count_width(order: int, dim: int) -> int:
  return -(-math.comb(dim + order - 1, order) // dim)


def alg_config(name: str, order: int, dim: int, runs: int = 1):
  """(config, algorithm name for the engine, width) of one program of the memory table."""
  from overparam import config_lib  # noqa: PLC0415
  c = config_lib.base_config()
  engine = 'gd' if name == 'gd_dense' else name
  c.algorithms = (engine,)
  c.order, c.dims, c.rank = order, (dim,), 3
  c.num_seeds = runs
  c.steps, c.chunk_steps = 2, 2
  c.checkpoint_every_s = 1e9
  c.save_params = False
  c.eps = 1e-30
  if 'memory_gb' in c:
    c.memory_gb = 1e6  # the library's pre-flight check is compared with, not applied
  if name == 'gd_dense':
    c.loss = 'dense'
  if name in ('lazy', 'lazy_exact'):
    width = count_width(order, dim)
    c.x64 = True
    c.lazy.power_iters = 5
  else:
    width = 64
  c.widths = (width,)
  return c, engine, width


def _nbytes(tree) -> int:
  import jax  # noqa: PLC0415
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def abstract_run_data(c, dim: int, runs: int, bucket: int, loss: str, sharding):
  """ShapeDtypeStructs of experiments.run_data(...) for `runs` cells (nothing allocated)."""
  import jax  # noqa: PLC0415
  from overparam import algorithms, experiments, tensors  # noqa: PLC0415
  dt = np.dtype(experiments.dtype_of(c))
  s = lambda *shape, dtype=dt: jax.ShapeDtypeStruct((runs,) + shape, dtype, sharding=sharding)
  r = c.rank
  target = tensors.Target(coeffs=s(r), factors=s(r, dim), dense=s(*(dim,) * c.order) if loss == 'dense' else None)
  return algorithms.RunData(init_key=s(2, dtype=np.uint32), reinit_key=s(2, dtype=np.uint32), mask=s(bucket),
                            signs=s(bucket), width=s(), target=target, target_sq=s())


def model_bytes(name: str, order: int, dim: int, runs: int = 1) -> dict:
  """The memory model's terms (bytes) for one program; compile-only."""
  import jax  # noqa: PLC0415
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  from overparam import config_lib, experiments, sweep  # noqa: PLC0415
  c, engine, width = alg_config(name, order, dim, runs)
  loss = config_lib.resolve_loss(c)
  sharding = NamedSharding(sweep.run_mesh(), P('runs'))
  grid = (width,) if engine == 'lazy_exact' else ()  # lazy_exact runs its grid path (runs = seeds)
  alg = experiments.build_algorithm(engine, c, dim, width, grid)
  data = abstract_run_data(c, dim, runs, width, loss, sharding)
  init, chunk, finish = sweep.compiled(alg, config_lib.chunk_of(c), sharding, 0)
  peaks = {}

  def account(label, fn, *args):
    m = fn.lower(*args).compile().memory_analysis()
    peaks[label] = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                       - m.alias_size_in_bytes)
    return m

  account('init', init, data)
  state = jax.eval_shape(init, data)
  account('chunk', chunk, state, data)
  account('finish', finish, state, data)  # export, dense_model and extras in one program
  outs = _nbytes(jax.eval_shape(finish, state, data))
  dense_eval = engine in ('lazy', 'lazy_exact') or dim ** order <= 1 << 24
  f64 = 3 * 8 * dim ** order if dense_eval else 3 * 8 * width * dim  # finalize: one run at a time
  sweep.compiled.cache_clear()
  jax.clear_caches()
  host = _nbytes(data) + _nbytes(state) + outs
  device = max(peaks.values()) + lapack_workspace(engine, c, order, dim, width)
  return {'device_peak': device, 'peak_fn': max(peaks, key=peaks.get), 'host': host,
          'f64_eval': f64, 'width': width, 'total_no_base': host + max(device, f64)}


def lapack_workspace(engine: str, c, order: int, dim: int, bucket: int) -> int:
  """Bytes of LAPACK's syevd workspace (2 n^2 + 6 n + 1 words, n = the Gram size min(N, P)) that
  the per-width lazy_exact path's eigh allocates outside XLA's buffer accounting (once per program:
  the batch loop reuses it). Measured without it: lazy_exact RSS 1.34x the model at d = 28. The grid
  path (what the engine runs) calls no eigh: its LAPACK calls (potrf, geqrf on N x (d+1), gesdd on
  (d+1) x (d+1)) work in place or on small blocks, so 0."""
  return 0


def check_estimate(engine: str, c, dim: int, bucket: int, runs: int):
  """The library's pre-flight estimate (overparam.memory.program_bytes) of one program, or None
  where the library has none."""
  try:
    from overparam import memory  # noqa: PLC0415
  except ImportError:
    return None
  return int(memory.program_bytes(engine, c, dim, bucket, c.rank, runs))


def measure(name: str, order: int, dim: int, runs: int = 1) -> int:
  """Peak RSS (bytes) of experiments.run on one program, in a fresh subprocess."""
  out = common.run_json_subprocess('benchmarks.memory_bench', ['--measure', json.dumps([name, order, dim, runs])],
                                   timeout=1200)
  return out['peak_rss']


def _child_measure(spec: str):
  name, order, dim, runs = json.loads(spec)
  c, _, _ = alg_config(name, order, dim, runs)
  import jax  # noqa: PLC0415
  if c.x64:
    jax.config.update('jax_enable_x64', True)
  from overparam import experiments  # noqa: PLC0415
  with tempfile.TemporaryDirectory() as wd:
    experiments.run(c, wd)
  print(json.dumps({'peak_rss': common.peak_rss_bytes()}))


def find_dmax(name: str, order: int, d_lo: int, d_hi: int, probes: int = 6, base: int = 0, calib: float = 1.0):
  """Largest d whose predicted peak calib * (base + model(d)) is <= LIMIT.

  A secant search in log d - log model(d) on the model's own bytes (the base is a constant that
  would flatten the log-log slope), each new probe at most 4x the largest probe so far.
  Returns (d_ok, bytes_ok, d_over, bytes_over) with bytes = calib * (base + model); d_over is None
  if no probe exceeded the limit.
  """
  budget = LIMIT / calib - base
  f = {}

  def value(d):
    if d not in f:
      f[d] = model_bytes(name, order, d)['total_no_base']
    return f[d]

  value(d_lo)
  value(d_hi)
  for _ in range(probes):
    ok = [d for d in f if f[d] <= budget]
    over = [d for d in f if f[d] > budget]
    if ok and over and min(over) - max(ok) <= max(1, int(0.01 * max(ok))):
      break
    a, b = (max(ok), min(over)) if (ok and over) else tuple(sorted(f)[-2:])
    slope = math.log(f[b] / f[a]) / math.log(b / a) if f[b] > f[a] else 1.0
    guess = b * (budget / f[b]) ** (1.0 / max(slope, 0.5))
    guess = min(guess, 4 * max(f))
    if ok and over:  # stay strictly inside the bracket
      guess = min(max(guess, max(ok) + 1), min(over) - 1)
    d = max(2, int(round(guess)))
    if d in f:
      d = d + 1 if f[d] <= budget else d - 1
      if d in f:
        break
    value(d)
  ok = [d for d in f if f[d] <= budget]
  over = [d for d in f if f[d] > budget]
  total = lambda d: None if d is None else calib * (base + f[d])
  d_ok = max(ok) if ok else None
  d_over = min(over) if over else None
  return d_ok, total(d_ok), d_over, total(d_over)


# Starting probes of the search (order -> (d_lo, d_hi)): sizes that compile quickly and bracket the
# leading term's growth.
SEARCH_START = {
    'gd': {3: (100_000, 1_000_000), 4: (100_000, 1_000_000)},
    'beyond_lazy': {3: (100_000, 1_000_000), 4: (100_000, 1_000_000)},
    'gd_dense': {3: (200, 400), 4: (60, 120)},
    'lazy': {3: (60, 120), 4: (16, 24)},
    'lazy_exact': {3: (24, 36), 4: (10, 14)},
}


def largest_default_programs():
  """[(config name, algorithm, order, d, bucket widths, seeds, x64)] of each shipped config's
  largest program per algorithm (largest d, widest bucket)."""
  import importlib.util  # noqa: PLC0415
  from overparam import config_lib, registry  # noqa: PLC0415
  out = []
  cdir = os.path.join(common.ROOT, 'configs')
  for fname in sorted(os.listdir(cdir)):
    if not fname.endswith('.py'):
      continue
    spec = importlib.util.spec_from_file_location(f'cfg_{fname[:-3]}', os.path.join(cdir, fname))
    mod = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(mod)
      c = mod.get_config()
    except Exception as e:  # noqa: BLE001 - a config being written by someone else
      print(f'  (skipped {fname}: {type(e).__name__}: {e})')
      continue
    ranks = config_lib.ranks_of(c)
    n_alpha = max(1, len(c.alphas))
    for alg in c.algorithms:
      widths = config_lib.widths_of(c, alg) if hasattr(config_lib, 'widths_of') else c.widths
      top = registry.get(alg).width_groups(widths, c)[-1]  # lazy_exact (one_program): its whole grid
      out.append((fname, alg, c.order, max(c.dims), tuple(top), c.num_seeds, bool(c.x64), max(ranks),
                  n_alpha if alg == 'gd' else 1, c))
  return out


def default_program_bytes(entry) -> dict:
  """Model terms of one shipped config's largest program (its real widths, seeds, rank, dtype)."""
  import jax  # noqa: PLC0415
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  from overparam import config_lib, experiments, registry, sweep  # noqa: PLC0415
  fname, alg_name, order, dim, top, seeds, x64, rank, _, c = entry
  c = c.copy_and_resolve_references()
  c.rank = rank
  one = registry.get(alg_name).is_one_program(c)
  runs = seeds if one else len(top) * seeds  # a one-program algorithm's runs are the seeds
  bucket = max(top)
  loss = config_lib.resolve_loss(c)
  sharding = NamedSharding(sweep.run_mesh(), P('runs'))
  alg = experiments.build_algorithm(alg_name, c, dim, bucket, tuple(top) if one else ())
  data = abstract_run_data(c, dim, runs, bucket, loss, sharding)
  fns = sweep.compiled(alg, config_lib.chunk_of(c), sharding, c.trace_every)
  peak = 0
  state = jax.eval_shape(fns[0], data)
  for k, fn in enumerate(fns):
    if fn is None:
      continue
    args = (data,) if k == 0 else (state, data)
    m = fn.lower(*args).compile().memory_analysis()
    peak = max(peak, int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                         - m.alias_size_in_bytes))
  dense_eval = alg_name in ('lazy', 'lazy_exact') or dim ** order <= 1 << 24
  f64 = 3 * 8 * dim ** order if dense_eval else 3 * 8 * bucket * dim  # finalize: one run at a time
  sweep.compiled.cache_clear()
  jax.clear_caches()
  outs = sum(_nbytes(jax.eval_shape(fn, state, data)) for fn in fns[2:] if fn is not None)
  host = _nbytes(data) + _nbytes(state) + outs
  device = peak + lapack_workspace(alg_name, c, order, dim, bucket)
  return {'runs': runs, 'bucket': bucket, 'total_no_base': host + max(device, f64), 'config': c}


def _child_measure_default(spec: str):
  """Runs the largest program of a shipped config (its top bucket at its largest d, all seeds),
  iterative algorithms cut to 5 steps and 5 power iterations (memory does not grow with either)."""
  fname, alg, dim, top = json.loads(spec)
  import importlib.util  # noqa: PLC0415
  path = os.path.join(common.ROOT, 'configs', fname)
  spec_ = importlib.util.spec_from_file_location('cfg', path)
  mod = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(mod)
  c = mod.get_config()
  import jax  # noqa: PLC0415
  if c.x64:
    jax.config.update('jax_enable_x64', True)
  from overparam import experiments  # noqa: PLC0415
  c.algorithms, c.dims, c.widths = (alg,), (dim,), tuple(top)
  if 'algorithm_widths' in c and alg in c.algorithm_widths:
    c.algorithm_widths[alg] = tuple(top)
  c.steps = min(c.steps, c.chunk_steps, 5)
  c.chunk_steps = c.steps
  c.lazy.power_iters = min(c.lazy.power_iters, 5)  # a fori_loop: its count does not change memory
  c.checkpoint_every_s = 1e9
  if 'memory_gb' in c:
    c.memory_gb = 1e6  # the library's pre-flight check is compared with, not applied
  if c.trace_every:
    c.trace_every = 0
  with tempfile.TemporaryDirectory() as wd:
    experiments.run(c, wd)
  print(json.dumps({'peak_rss': common.peak_rss_bytes()}))


def measure_base() -> int:
  """RSS of a tiny program's subprocess minus the tiny program's own model bytes."""
  return measure('gd', 3, 8) - model_bytes('gd', 3, 8)['total_no_base']


def main_model(quick: bool = False):
  """Validation of the model against measured RSS, and (full) the d_max table."""
  common.header('memory_bench (model)', quick)
  import jax  # noqa: PLC0415
  jax.config.update('jax_enable_x64', True)  # the lazy rows are float64, as their configs
  base = measure_base()
  print(f'  base RSS (interpreter, jax, XLA runtime, matplotlib; tiny program minus its model bytes): '
        f'{common.fmt_bytes(base)}')
  print('  (check est.: the library\'s pre-flight estimate, overparam.memory.program_bytes, against the '
        'measured RSS less the base)')
  print(f'  {"algorithm":<12}{"l":>2}{"d":>10}{"m":>6}{"runs":>5}  {"device peak (fn)":<24}{"host":>10}'
        f'{"f64 eval":>10}{"predicted":>11}{"measured":>11}{"meas/pred":>10}{"check est.":>11}{"est/(meas-base)":>16}')
  worst = 0.0
  for name in ALGS:
    for order, dim, runs in (VALIDATE[name][:1] if quick else VALIDATE[name]):
      mb = model_bytes(name, order, dim, runs)
      pred = base + mb['total_no_base']
      meas = measure(name, order, dim, runs)
      worst = max(worst, meas / pred)
      c, engine, width = alg_config(name, order, dim, runs)
      est = check_estimate(engine, c, dim, width, runs)
      est_s = (f'{common.fmt_bytes(est):>11}{est / max(meas - base, 1):>16.2f}' if est is not None else f'{"-":>11}{"-":>16}')
      print(f'  {name:<12}{order:>2}{dim:>10}{mb["width"]:>6}{runs:>5}  '
            f'{common.fmt_bytes(mb["device_peak"]) + " (" + mb["peak_fn"] + ")":<24}{common.fmt_bytes(mb["host"]):>10}'
            f'{common.fmt_bytes(mb["f64_eval"]):>10}{common.fmt_bytes(pred):>11}{common.fmt_bytes(meas):>11}'
            f'{meas / pred:>10.2f}' + est_s, flush=True)
  calib = max(1.0, worst)
  if not quick:
    print(f'  largest d with (model x {calib:.2f}, the worst measured/predicted above) <= 24 GiB, one run per '
          'program (over at d: the nearest probe that did not fit)')
    print(f'  {"algorithm":<12}{"dtype":>8}{"l":>3}{"d_max":>11}{"m at d_max":>11}{"bytes":>11}{"over at d":>11}')
    for order in (3, 4):
      for name in ALGS:
        lo, hi = SEARCH_START[name][order]
        d_ok, b_ok, d_over, _ = find_dmax(name, order, lo, hi, probes=7, base=base, calib=calib)
        dtype = 'float64' if name in ('lazy', 'lazy_exact') else 'float32'
        width = alg_config(name, order, d_ok or lo)[2]
        print(f'  {name:<12}{dtype:>8}{order:>3}{d_ok if d_ok else "-":>11}{width:>11}'
              f'{common.fmt_bytes(b_ok) if b_ok else "-":>11}{d_over if d_over else "-":>11}', flush=True)
  print(f'memory_model measured/predicted peak RSS (worst of the validation runs) ratio={worst:.2f}', flush=True)
  return worst


def main_largest(quick: bool = False):
  """Model estimate of every shipped config's largest program; the largest one measured."""
  common.header('memory_bench (largest shipped program)', quick)
  import jax  # noqa: PLC0415
  jax.config.update('jax_enable_x64', True)
  base = measure_base()
  print('  shipped configs, largest program per algorithm (top width bucket at the largest d, all seeds):')
  preds = []
  for e in largest_default_programs():
    try:
      mb = default_program_bytes(e)
    except Exception as ex:  # noqa: BLE001 - report, do not stop the table
      print(f'    {e[0]} {e[1]}: not estimated ({type(ex).__name__}: {str(ex)[:120]})')
      continue
    mb['check'] = check_estimate(e[1], mb['config'], e[3], mb['bucket'], mb['runs'])
    preds.append((base + mb['total_no_base'], e, mb))
    chk = f', check est. {common.fmt_bytes(mb["check"])}' if mb['check'] is not None else ''
    print(f'    {e[0]:<24}{e[1]:<12} l={e[2]} d={e[3]:<6} widths {str(e[4]):<20} runs {mb["runs"]:<4}'
          f' predicted {common.fmt_bytes(base + mb["total_no_base"])}{chk}', flush=True)
  limit = 0.8 * available_bytes()
  fits = [p for p in preds if p[0] <= limit]
  largest = max(preds, key=lambda p: p[0])
  if largest not in fits:
    e, mb = largest[1], largest[2]
    print(f'  the largest, {e[0]} {e[1]} (predicted {common.fmt_bytes(largest[0])}), does not fit this machine '
          f'(80% of MemAvailable = {common.fmt_bytes(limit)}): measured instead the largest that fits')
  to_measure = [max(fits, key=lambda p: p[0])]
  default = [p for p in fits if p[1][0] == 'default.py']
  if default and max(default, key=lambda p: p[0]) not in to_measure:
    to_measure.append(max(default, key=lambda p: p[0]))
  worst = 0.0
  for pred, e, mb in to_measure:
    meas = common.run_json_subprocess('benchmarks.memory_bench', ['--measure-default', json.dumps(
        [e[0], e[1], e[3], list(e[4])])], timeout=1200)['peak_rss']
    tag = 'largest_default_program' if e[0] != 'default.py' or len(to_measure) == 1 else 'default_py_program'
    chk = (f' check_est={common.fmt_bytes(mb["check"])} (vs measured-base {common.fmt_bytes(meas - base)})'
           if mb['check'] is not None else '')
    print(f'{tag} {e[0]} {e[1]} l={e[2]} d={e[3]} widths={e[4]} runs={mb["runs"]} '
          f'measured_peak_rss={common.fmt_bytes(meas)} predicted={common.fmt_bytes(pred)}{chk} ratio={meas / pred:.2f}',
          flush=True)
    worst = max(worst, meas / pred)
  return worst


def available_bytes() -> int:
  with open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true')
  p.add_argument('--part', choices=('model', 'largest'), default='model',
                 help='model: validation and d_max table; largest: the largest shipped program')
  p.add_argument('--measure', help='internal: JSON [name, order, d, runs]; prints peak RSS as JSON')
  p.add_argument('--measure-default', help='internal: JSON [config file, algorithm, d, widths]')
  a = p.parse_args()
  if a.measure:
    _child_measure(a.measure)
  elif a.measure_default:
    _child_measure_default(a.measure_default)
  elif a.part == 'largest':
    main_largest(a.quick)
  else:
    main_model(a.quick)
