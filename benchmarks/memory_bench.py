r"""Memory: peak resident memory of the largest default program, and the largest d per order that
fits in 24 GiB for each algorithm, from a memory model validated against measured RSS.

  python -m benchmarks.memory_bench                   # model validated at 2 sizes x 5 algorithms,
                                                      # d_max table for l = 3, 4 (~5 minutes)
  python -m benchmarks.memory_bench --quick           # one (the smaller) validation size each
  python -m benchmarks.memory_bench --part=largest    # every shipped config's largest program by the
                                                      # model; the largest that fits and configs/default.py's
                                                      # run and measured (~15 min on 2 cores, 12 of them
                                                      # network_gpu.py's lazy_exact; --quick: default.py's only)

Method.
  Measured: `experiments.run` (the launcher's whole path: targets, one program, finalize with its
  float64 host evaluation, results, figures) in a fresh subprocess, OpenBLAS on the core count as
  launch.py sets it; peak RSS = ru_maxrss.
  Model: predicted peak RSS of one program =
      base                     RSS of the same subprocess running a tiny program (interpreter, jax,
                               XLA runtime, matplotlib), measured in this run
    + host copies              the host RunData, the host copy of the final state and of finish's
                               outputs (engine.run_program's to_host)
    + max(device peak,         max over the engine's compiled functions of the program (init, chunk,
                               finish) of XLA's own buffer accounting (Compiled.memory_analysis:
                               arguments + outputs + temporaries - donated aliases)
          float64 evaluation)  finalize's rel_error, one run at a time, after the program's device
                               buffers are freed: 3 dense float64 (d,)^l arrays when it evaluates
                               densely (dense models or targets, or d^l <= 2^24), else ~3 m d float64
  The program is the one `planner.plan` makes of the config, its inputs built by planner.run_algorithm
  and planner.run_data (one run, a dense T* as a placeholder of its shape) and its functions by
  engine.program_of (the engine's own constructor, compiler options included); compiled from abstract
  shapes on engine.run_mesh, nothing of the program's size allocated.
  Validated at two sizes per algorithm (measured / predicted printed). The model leaves out what the
  XLA CPU runtime allocates beyond its buffer assignment (YNNPACK/XNNPACK fusion scratch: with
  those fusions disabled a lazy l = 4 chunk's RSS growth matched XLA's accounting; with them it was
  1.2 GB over; LAPACK workspaces), compiled code and allocator slack, so it can underestimate: the
  largest d that fits in 24 GiB is found on the model scaled by the worst measured/predicted ratio of
  the validation (compile-only probes, a secant search in log d - log bytes, bracketed by consecutive
  probes), one run per program (a program of n runs needs about n times the per-run part).
  check est.: the library's pre-flight estimate (planner.program_bytes with check_memory's runs per
  device and dtype), which leaves out the base.
Widths: gd and beyond_lazy m = 64 (their widths do not grow with d); lazy and lazy_exact at the
dimension count m = ceil(C(d+l-1, l) / d), the smallest width whose tangent space can span the
symmetric tensors (the width the lazy-threshold experiments need at that d; lazy_exact runs it as a
one-width grid, its engine path). dtypes as the shipped configs: gd, beyond_lazy float32; lazy,
lazy_exact float64 (configs/lazy_threshold*.py set x64). gd_dense is gd with config.loss = dense
(what a dense target file forces).

A sweep runs its programs one after another and frees each program's buffers before the next, so
its peak RSS is about that of its largest program: --part=largest takes, per shipped config
(configs/*.py) and algorithm, the program of its plan with the largest pre-flight estimate (ties:
the largest d), gives its model, and runs the largest that fits this machine for real (plus
configs/default.py's largest), each config cut to that one program, iterative algorithms to 5 steps
and lazy's power iteration to 5 iterations (memory does not grow with either).

ratio (the run.py lines) = measured / predicted peak RSS: worst over the validation sizes
(`memory_model`), of the largest shipped program (`largest_default_program`, `default_py_program`),
and of configs/default.py's largest against the pre-flight estimate plus the base
(`default_py_preflight`); 1 = exact, > 1 = the prediction is low.
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
# the measuring subprocesses: OpenBLAS threads as launch.py sets them (overparam alone defaults to 1)
CHILD_ENV = {'OPENBLAS_NUM_THREADS': os.environ.get('OPENBLAS_NUM_THREADS', str(os.cpu_count() or 1))}


def count_width(order: int, dim: int) -> int:
  return -(-math.comb(dim + order - 1, order) // dim)


def alg_config(name: str, order: int, dim: int, runs: int = 1):
  """(config, width) of one program of the memory table."""
  from overparam import config_lib  # noqa: PLC0415
  c = config_lib.base_config()
  c.algorithms = ('gd' if name == 'gd_dense' else name,)
  c.order, c.dims, c.rank = order, (dim,), 3
  c.num_seeds = runs
  c.steps, c.chunk_steps = 2, 2
  c.checkpoint_every_s = 1e9
  c.save_params = False
  c.eps = 1e-30
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
  return c, width


def _nbytes(tree) -> int:
  import jax  # noqa: PLC0415
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def only_program(c):
  """The one program of config c's plan."""
  from overparam import planner  # noqa: PLC0415
  progs = planner.plan(c)
  if len(progs) != 1:
    raise ValueError(f'expected one program, the plan has {[p.label for p in progs]}')
  return progs[0]


def program_inputs(c, prog):
  """(alg, data) of `prog` as the engine gets them from experiments (padded to the device count),
  data as zero-stride host arrays: planner.run_algorithm's leaves, and planner.run_data's structure,
  shapes and dtypes (one run built, a dense T* as a placeholder of its shape)."""
  import jax  # noqa: PLC0415
  from overparam import engine, planner, registry, targets  # noqa: PLC0415
  seeds = [c.seed + s for s in range(c.num_seeds)]
  runs = planner.program_runs(prog, prog.cells(seeds))
  n_total = engine.padded_runs(len(runs), engine.run_mesh().size)
  alg = engine.pad_runs(planner.run_algorithm(prog, runs), n_total)
  scale_free = all(registry.flag(a, 'scale_free') for a in c.algorithms)
  t = targets.build_all(c, seeds[:1], scale_free, targets.load_file(c)[0])[(targets.key_of(prog.common), prog.dim)]
  t = t[seeds[0]]
  dense = t.dense is None and (prog.task.loss == 'dense' or prog.algs[0].needs_dense_target)
  if dense:
    t = t._replace(dense=np.zeros((1,) * prog.task.order, t.coeffs.dtype))
  one = planner.run_data(prog, runs[:1], {seeds[0]: t})
  if dense:
    one = one._replace(target=one.target._replace(dense=np.zeros((1,) + (prog.dim,) * prog.task.order,
                                                                 one.target.dense.dtype)))
  data = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), x.dtype), (n_total,) + x.shape[1:]), one)
  return alg, data


def program_model(c, prog) -> dict:
  """The memory model's terms (bytes) of one program; compile-only."""
  import jax  # noqa: PLC0415
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  from overparam import config_lib, engine, registry  # noqa: PLC0415
  jax.config.update('jax_enable_x64', bool(c.x64))  # as the measured subprocess runs it
  sharding = NamedSharding(engine.run_mesh(), P('runs'))
  alg, data = program_inputs(c, prog)
  fns = engine.program_of(alg, prog.task, data, config_lib.chunk_of(c), sharding, c.trace_every)
  spec = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding), t)
  alg, data = spec(alg), spec(data)
  peaks = {}

  def account(label, fn, *args):
    m = fn.lower(*args).compile().memory_analysis()
    peaks[label] = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                       - m.alias_size_in_bytes)

  account('init', fns.init, alg, data)
  state = jax.eval_shape(fns.init, alg, data)
  account('chunk', fns.chunk, alg, state, data)
  account('finish', fns.finish, alg, state, data)  # export, dense_model and extras in one program
  outs = _nbytes(jax.eval_shape(fns.finish, alg, state, data))
  engine.compiled.cache_clear()
  jax.clear_caches()
  order, dim = prog.task.order, prog.dim
  dense_eval = registry.flag(prog.name, 'lazy') or data.target.dense is not None or dim ** order <= 1 << 24
  f64 = 3 * 8 * dim ** order if dense_eval else 3 * 8 * prog.bucket * dim  # finalize: one run at a time
  host = _nbytes(data) + _nbytes(state) + outs
  device = max(peaks.values())
  return {'device_peak': device, 'peak_fn': max(peaks, key=peaks.get), 'host': host, 'f64_eval': f64,
          'runs': data.mask.shape[0], 'total_no_base': host + max(device, f64)}


def check_estimate(c, prog) -> int:
  """The library's pre-flight estimate of one program (what planner.check_memory compares, not its
  refusal)."""
  from overparam import planner  # noqa: PLC0415
  return int(planner.device_need(c, prog)[1])


def model_bytes(name: str, order: int, dim: int, runs: int = 1) -> dict:
  """The model's terms of one program of the memory table."""
  c, width = alg_config(name, order, dim, runs)
  out = program_model(c, only_program(c))
  out['width'] = width
  return out


def measure(name: str, order: int, dim: int, runs: int = 1) -> int:
  """Peak RSS (bytes) of experiments.run on one program, in a fresh subprocess."""
  out = common.run_json_subprocess('benchmarks.memory_bench', ['--measure', json.dumps([name, order, dim, runs])],
                                   env=CHILD_ENV, timeout=1200)
  return out['peak_rss']


def _run_and_report(c):
  import jax  # noqa: PLC0415
  if c.x64:
    jax.config.update('jax_enable_x64', True)
  from overparam import experiments  # noqa: PLC0415
  with tempfile.TemporaryDirectory() as wd:
    experiments.run(c, wd)
  print(json.dumps({'peak_rss': common.peak_rss_bytes()}))


def _child_measure(spec: str):
  name, order, dim, runs = json.loads(spec)
  _run_and_report(alg_config(name, order, dim, runs)[0])


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


def shipped_config(fname: str):
  import overparam  # noqa: PLC0415 - as every overparam import here: after the child's environment is set
  return overparam.load_config(os.path.join(common.ROOT, 'configs', fname))


def one_program_config(fname: str, alg: str, dim: int, widths, values):
  """A shipped config cut to one program of its plan (algorithm, d, width bucket, program-level axis
  values), iterative algorithms to 5 steps and 5 power iterations (memory does not grow with either);
  no trajectories, no checkpoints, the pre-flight check not applied."""
  c = shipped_config(fname)
  c.algorithms, c.dims = (alg,), (dim,)
  c.widths = tuple(widths)
  c.algorithm_widths[alg] = tuple(widths)
  for field, v in values.items():
    if field == 'rank':
      c.ranks = (v,)
    elif field == 'alpha':
      c.alphas = (v,)
    else:
      c.axes = tuple(f'{field}={v!r}' if a.partition('=')[0].strip() == field else a for a in c.axes)
  c.steps = min(c.steps, c.chunk_steps, 5)
  c.chunk_steps = c.steps
  c.lazy.power_iters = min(c.lazy.power_iters, 5)  # a fori_loop: its count does not change memory
  c.trace_every = 0
  c.checkpoint_every_s = 1e9
  c.memory_gb = 1e6  # the library's pre-flight check is compared with, not applied
  return c


def largest_programs():
  """[(config file, algorithm, d, widths, program-level values)] of each shipped config's largest
  program per algorithm by the pre-flight estimate (ties: the largest d)."""
  import jax  # noqa: PLC0415
  from overparam import planner  # noqa: PLC0415
  out = []
  for fname in sorted(f for f in os.listdir(os.path.join(common.ROOT, 'configs')) if f.endswith('.py')):
    try:
      c = shipped_config(fname)
      jax.config.update('jax_enable_x64', bool(c.x64))
      best = {}
      for prog in planner.plan(c):
        key = (check_estimate(c, prog), prog.dim)
        if prog.name not in best or key > best[prog.name][0]:
          best[prog.name] = (key, prog)
    except Exception as e:  # noqa: BLE001 - a config being written by someone else
      print(f'  (skipped {fname}: {type(e).__name__}: {e})')
      continue
    out += [(fname, p.name, p.dim, list(p.widths), dict(p.values)) for _, p in best.values()]
  return out


def _child_measure_default(spec: str):
  _run_and_report(one_program_config(*json.loads(spec)))


def measure_base() -> int:
  """RSS of a tiny program's subprocess minus the tiny program's own model bytes."""
  return measure('gd', 3, 8) - model_bytes('gd', 3, 8)['total_no_base']


def main_model(quick: bool = False):
  """Validation of the model against measured RSS, and (full) the d_max table."""
  common.header('memory_bench (model)', quick)
  base = measure_base()
  print(f'  base RSS (interpreter, jax, XLA runtime, matplotlib; tiny program minus its model bytes): '
        f'{common.fmt_bytes(base)}')
  print('  (check est.: the library\'s pre-flight estimate, planner.program_bytes, against the '
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
      c, _ = alg_config(name, order, dim, runs)
      est = check_estimate(c, only_program(c))
      print(f'  {name:<12}{order:>2}{dim:>10}{mb["width"]:>6}{runs:>5}  '
            f'{common.fmt_bytes(mb["device_peak"]) + " (" + mb["peak_fn"] + ")":<24}{common.fmt_bytes(mb["host"]):>10}'
            f'{common.fmt_bytes(mb["f64_eval"]):>10}{common.fmt_bytes(pred):>11}{common.fmt_bytes(meas):>11}'
            f'{meas / pred:>10.2f}{common.fmt_bytes(est):>11}{est / max(meas - base, 1):>16.2f}', flush=True)
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
        width = alg_config(name, order, d_ok or lo)[1]
        print(f'  {name:<12}{dtype:>8}{order:>3}{d_ok if d_ok else "-":>11}{width:>11}'
              f'{common.fmt_bytes(b_ok) if b_ok else "-":>11}{d_over if d_over else "-":>11}', flush=True)
  print(f'memory_model measured/predicted peak RSS (worst of the validation runs) ratio={worst:.2f}', flush=True)
  return worst


def main_largest(quick: bool = False):
  """Model estimate of every shipped config's largest program; the largest one that fits measured,
  and configs/default.py's."""
  common.header('memory_bench (largest shipped program)', quick)
  base = measure_base()
  print(f'  base RSS: {common.fmt_bytes(base)}')
  print('  shipped configs, largest program per algorithm (by the pre-flight estimate; model = base + '
        'program; check est. = planner.program_bytes, no base):')
  preds = []
  for e in largest_programs():
    try:
      c = one_program_config(*e)
      prog = only_program(c)
      mb = program_model(c, prog)
    except Exception as ex:  # noqa: BLE001 - report, do not stop the table
      print(f'    {e[0]} {e[1]}: not estimated ({type(ex).__name__}: {str(ex)[:120]})')
      continue
    mb['check'] = check_estimate(c, prog)
    pred = base + mb['total_no_base']
    widths = f'{e[3][0]}-{e[3][-1]}({len(e[3])})' if len(e[3]) > 1 else str(e[3][0])
    mb['what'] = f'{e[0]} {prog.name}{prog.tag} l={prog.task.order} d={e[2]} widths={widths} runs={mb["runs"]}'
    preds.append((pred, e, mb))
    print(f'    {e[0]:<22}{prog.name + prog.tag:<28} l={prog.task.order} d={e[2]:<5} widths {widths:<13} '
          f'runs {mb["runs"]:<4} model {common.fmt_bytes(pred):>9} (device {common.fmt_bytes(mb["device_peak"])} '
          f'{mb["peak_fn"]}), check est. {common.fmt_bytes(mb["check"])}', flush=True)
  limit = 0.8 * available_bytes()
  fits = [p for p in preds if p[0] <= limit]
  largest = max(preds, key=lambda p: p[0])
  if largest not in fits:
    print(f'  the largest, {largest[1][0]} {largest[1][1]} (model {common.fmt_bytes(largest[0])}), does not fit this '
          f'machine (80% of MemAvailable = {common.fmt_bytes(limit)}): measured instead the largest that fits')
  default = [p for p in fits if p[1][0] == 'default.py']
  to_measure = [] if quick else [max(fits, key=lambda p: p[0])]
  if default and max(default, key=lambda p: p[0]) not in to_measure:
    to_measure.append(max(default, key=lambda p: p[0]))
  worst = 0.0
  for pred, e, mb in to_measure:
    meas = common.run_json_subprocess('benchmarks.memory_bench', ['--measure-default', json.dumps(list(e))],
                                      env=CHILD_ENV, timeout=1200)['peak_rss']
    tag = 'default_py_program' if e[0] == 'default.py' and (quick or len(to_measure) > 1) else 'largest_default_program'
    what = mb['what']
    print(f'{tag} {what} measured_peak_rss={common.fmt_bytes(meas)} model={common.fmt_bytes(pred)} '
          f'ratio={meas / pred:.2f}', flush=True)
    worst = max(worst, meas / pred)
    if e[0] == 'default.py':
      est = base + mb['check']
      print(f'default_py_preflight {what} measured_peak_rss={common.fmt_bytes(meas)} '
            f'check_est+base={common.fmt_bytes(est)} (check est. {common.fmt_bytes(mb["check"])} vs measured-base '
            f'{common.fmt_bytes(meas - base)}) ratio={meas / est:.2f}', flush=True)
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
  p.add_argument('--measure-default', help='internal: JSON [config file, algorithm, d, widths, axis values]')
  a = p.parse_args()
  if a.measure:
    _child_measure(a.measure)
  elif a.measure_default:
    _child_measure_default(a.measure_default)
  elif a.part == 'largest':
    main_largest(a.quick)
  else:
    main_model(a.quick)
