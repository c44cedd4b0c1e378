"""Config -> targets -> one compiled program per (algorithm, order, d, width bucket) -> workdir.

`run(config, workdir)` is the whole job: it validates, resumes from whatever the workdir already
holds (only missing cells are computed), appends one results row per finished run, and writes
summary.json and the figures.
"""

import dataclasses
import math
import os
import subprocess
import time
from typing import Callable, Dict, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from overparam import (algorithms, analysis, config_lib, distributed, inputs, memory, metrics, network, objectives,
                       plots, registry, results, sweep, tensors)


def seed_keys(seed: int):
  """(target, init, reinit) keys of one seed, each derived from PRNGKey(seed) by fold_in."""
  key = jax.random.PRNGKey(seed)
  return tuple(jax.random.fold_in(key, i) for i in range(3))


dtype_of = config_lib.dtype_of


def build_algorithm(name: str, c: ml_collections.ConfigDict, dim: int, bucket: int, widths=()) -> algorithms.Algorithm:
  """The registered algorithm `name` for one program (registry.AlgorithmSpec.build). widths: the
  grid of a one-program algorithm's program (its build takes widths=...); () otherwise."""
  spec = registry.find(name)
  if spec is None:
    raise config_lib.ConfigError(f'config.algorithms: unknown algorithm {name!r} (registered: '
                                 f'{", ".join(registry.names())})')
  return spec.build(c, dim, bucket, widths=tuple(widths)) if widths else spec.build(c, dim, bucket)


# One-program algorithms (registry flag one_program, e.g. lazy_exact): the whole width grid of a
# (d, cell-axis values) is ONE program whose runs are the seeds; a run computes every width (state
# leaves with a leading width axis) and its outcome is split into the usual (width, seed) cells
# before finalize, so sweep.run_program, finalize, the rows and the resume by missing cells are those
# of any other algorithm (a seed with any missing width reruns, only missing cells are appended).

def split_widths(out: sweep.Outcome, group: List[int], seeds: List[int], cells) -> sweep.Outcome:
  """A one-program Outcome (runs = seeds, leaves (runs, G, ...); trace (runs, T, G, ...)) -> the
  Outcome of `cells` [(width, seed)], each a (width in group, seed in seeds)."""
  pick = np.array([seeds.index(s) * len(group) + group.index(m) for m, s in cells], np.int64)
  flat = lambda t: None if t is None else jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:])[pick], t)
  trace = {k: np.moveaxis(v, 2, 1).reshape((-1, v.shape[1]) + v.shape[3:])[pick] for k, v in out.trace.items()}
  return out._replace(state=flat(out.state), exported=flat(out.exported), dense=flat(out.dense),
                      extras=flat(out.extras), trace=trace)


def _tag_value(v) -> str:
  return repr(v) if isinstance(v, float) else str(v)


def file_tag(c: ml_collections.ConfigDict, values: Dict) -> str:
  """Part of checkpoint/params/trajectory names that makes them unique per cell-axis value:
  `_r<rank>` (rank axis), `_<field><value>` (other axes, in order), `_a<alpha>` (alpha axis)."""
  tag = ''
  for field, _ in config_lib.axes_of(c):
    v = values.get(field)
    if v is None:
      continue
    if field == 'rank':
      tag += f'_r{v}'
    elif field == 'alpha':
      continue
    else:
      tag += f'_{field}{_tag_value(v)}'
  if values.get('alpha') is not None and any(f == 'alpha' for f, _ in config_lib.axes_of(c)):
    tag += f'_a{values["alpha"]:g}'
  return tag


def cell_fields(c: ml_collections.ConfigDict, alg_name: str, values: Dict) -> Dict:
  """Row fields of the cell axes: rank, alpha (the config's for alpha-scaled algorithms, else
  None) and, when config.axes has other fields, each one's value (None where `alg_name` does not
  read it) and `axes`, their names (results.cell_id uses them)."""
  out = {'rank': c.rank, 'alpha': float(c.alpha) if registry.get(alg_name).alpha_scaled else None}
  extra = config_lib.generic_axes(c)
  if extra:
    out.update({f: values.get(f) for f in extra})
    out['axes'] = list(extra)
  return out


def make_target(c, dim: int, seed: int, file_array) -> tensors.Target:
  """file_array: the loaded target file: a dense array (.npy) or (coeffs, factors) (.npz), or None."""
  cp = file_array if isinstance(file_array, tuple) else None
  t = tensors.make_target(seed_keys(seed)[0], c.target.kind, c.order, dim, c.rank,
                          weights=tuple(c.target.weights), coherence=c.target.coherence,
                          noise=c.target.noise, dense=None if cp else file_array, cp=cp, dtype=dtype_of(c))
  return jax.tree.map(np.asarray, t)


def signs_of(c, bucket: int) -> np.ndarray:
  if c.signs == 'balanced':
    return np.where(np.arange(bucket) % 2 == 0, 1.0, -1.0)
  return np.ones(bucket)


def run_data(c, cells, targets: Dict[int, tensors.Target], bucket: int, loss: str) -> algorithms.RunData:
  """Host RunData for the cells (width, seed) of one program, stacked on a leading run axis.

  loss = 'samples': every run also gets its samples key (network.sample_key(seed)) and, unless
  config.online, its fixed training set (batch 0, drawn here on the host, the same on any device count).
  """
  dt = np.dtype(dtype_of(c))
  per_seed = {}  # what depends on the seed alone (T*, keys, ||T*||^2, samples): computed once per seed
  rows = []
  progress = _Progress('building run data', len(cells))
  for i, (width, seed) in enumerate(cells):
    progress(i)
    if seed not in per_seed:
      t = targets[seed]
      if loss == 'dense' and t.dense is None:  # build T* once, not at every step
        t = t._replace(dense=np.asarray(tensors.dense_cp(jnp.asarray(t.coeffs), jnp.asarray(t.factors), c.order)))
      _, init_key, reinit_key = seed_keys(seed)
      target_sq = np.asarray(tensors.target_sq_norm(jax.tree.map(jnp.asarray, targets[seed]), c.order), dt)
      samples = _samples_of(c, t, seed, target_sq) if loss == 'samples' else (None, None)
      per_seed[seed] = (t, np.asarray(init_key), np.asarray(reinit_key), target_sq, samples)
    t, init_key, reinit_key, target_sq, (samples, sample_key) = per_seed[seed]
    row = algorithms.RunData(
        init_key=init_key, reinit_key=reinit_key,
        mask=(np.arange(bucket) < width).astype(dt), signs=signs_of(c, bucket).astype(dt),
        width=np.asarray(width, dt), target=t, target_sq=target_sq)
    if loss == 'samples':
      row = row._replace(samples=samples, sample_key=sample_key)
    rows.append(row)
  return jax.tree.map(lambda *xs: np.stack(xs), *rows)


def _samples_of(c, t: tensors.Target, seed: int, target_sq):
  """(the fixed training set as host network.Samples, or None when online; the samples key)."""
  key = network.sample_key(seed)
  if c.online:
    return None, np.asarray(key)
  dim = t.factors.shape[1]
  s = network.draw(key, 0, int(c.num_samples), dim, jnp.asarray(t.coeffs), jnp.asarray(t.factors), c.order,
                   float(c.label_noise), jnp.sqrt(jnp.asarray(target_sq)), dtype_of(c))
  return jax.tree.map(np.asarray, s), np.asarray(key)


def provenance() -> Dict:
  try:
    rev = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    rev = None
  import jaxlib  # noqa: PLC0415
  return {'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'git_revision': rev,
          'devices': jax.device_count(), 'processes': jax.process_count(),
          'platform': jax.devices()[0].platform}


def _rel_error_dense(model: np.ndarray, t: tensors.Target, order: int) -> Optional[float]:
  t_star = (np.asarray(t.dense, np.float64) if t.dense is not None
            else objectives._np_dense(np.asarray(t.coeffs, np.float64), np.asarray(t.factors, np.float64), order))
  return results.clean_number(np.linalg.norm(np.asarray(model, np.float64) - t_star) / np.linalg.norm(t_star))


def _number(x):
  """An extras value for JSON: int for integer arrays, else clean_number."""
  if np.issubdtype(np.asarray(x).dtype, np.integer):
    return int(x)
  return results.clean_number(x)


# Algorithms whose spec is scale_free fit T* / ||T*|| (their numbers do not depend on the scale of
# T*): the host divides their target by a power of two near ||T*|| (exact in floating point) when
# ||T*|| is outside SAFE_SCALE, so any finite non-zero target trains alike; rows and params are in the
# target's units.
SAFE_SCALE = (2.0 ** -20, 2.0 ** 20)
# Rounds of continuing runs that the in-loop test stopped as converged but whose float64 rel_error
# is >= eps, each with a tighter in-loop threshold; a run still unconfirmed is reported 'unconfirmed'.
CONFIRM_ROUNDS = 2


def target_sq_f64(t: tensors.Target, order: int) -> float:
  """||T*||_F^2 on the host in float64."""
  if t.dense is not None:
    return float(np.sum(np.asarray(t.dense, np.float64) ** 2))
  c, a = np.asarray(t.coeffs, np.float64), np.asarray(t.factors, np.float64)
  return float(c @ (a @ a.T) ** order @ c)


def check_target(c, t: tensors.Target, dim: int, seed: int, scale_free: bool):
  """TargetError naming the target when T* is zero (all weights 0, an all-zero file, components that
  cancel) or its norm is outside the accepted range (inputs.check_target_scale: the host's float64
  range for every algorithm; the run dtype's [sqrt(eps), sqrt(max) / 100] for one that is not
  scale-free)."""
  where = (f'config.target.path {c.target.path!r}' if c.target.kind == 'file'
           else f'config.target (kind {c.target.kind}, weights {tuple(c.target.weights) or "all 1"})')
  # [reliab] moved into inputs.check_target_scale (no OverflowError at 1e300; float64 lower bound)
  inputs.check_target_scale(t.coeffs, t.factors, t.dense, c.order, dtype_of(c), f'{where} (d={dim}, seed {seed})',
                            scale_free)


def target_scale(t: tensors.Target, order: int) -> float:
  """The power of two the host divides a scale-free algorithm's target by (1.0 for ordinary targets)."""
  norm = float(np.sqrt(target_sq_f64(t, order)))
  if SAFE_SCALE[0] <= norm <= SAFE_SCALE[1]:
    return 1.0
  return float(2.0 ** round(math.log2(norm)))


def scaled_target(t: tensors.Target, s: float) -> tensors.Target:
  """T* / s for a power of two s (exact), in T*'s dtype."""
  if s == 1.0:
    return t
  div = lambda x: None if x is None else (np.asarray(x, np.float64) / s).astype(np.asarray(x).dtype)
  return t._replace(coeffs=div(t.coeffs), dense=div(t.dense))


def _exports(out: sweep.Outcome, cells, bucket: int, scales: Optional[Dict[int, float]] = None):
  """[(coeffs, factors) or None] per cell: the exported real components, in the target's units."""
  got = []
  for i, (width, seed) in enumerate(cells):
    if out.exported is None:
      got.append(None)
      continue
    k = out.exported[0].shape[1] // bucket
    keep = np.tile(np.arange(bucket) < width, k)
    coeffs, factors = out.exported[0][i][keep], out.exported[1][i][keep]
    s = (scales or {}).get(seed, 1.0)
    if s != 1.0:
      coeffs = np.asarray(coeffs, np.float64) * s
    got.append((coeffs, factors))
  return got


def rel_errors(c, cells, bucket: int, out: sweep.Outcome, targets, scales=None, exports=None) -> List[Optional[float]]:
  """The float64 rel_error of each cell (None: not finite, diverged); exports: _exports(out, ...)
  when the caller has it."""
  rels = []
  exports = _exports(out, cells, bucket, scales) if exports is None else exports
  for i, ((width, seed), ex) in enumerate(zip(cells, exports)):
    t = targets[seed]
    rel = None
    if int(out.state.status[i]) != algorithms.DIVERGED:
      if ex is not None:
        if np.all(np.isfinite(ex[0])) and np.all(np.isfinite(ex[1])):
          rel = results.clean_number(objectives.rel_error_f64(ex[0], ex[1], t, c.order))
      elif out.dense is not None and np.all(np.isfinite(out.dense[i])):
        s = (scales or {}).get(seed, 1.0)
        rel = _rel_error_dense(np.asarray(out.dense[i], np.float64) * s, t, c.order)
    rels.append(rel)
  return rels


def confirm(c, alg, data, cells, bucket: int, out: sweep.Outcome, targets, scales, run_kwargs, label: str):
  """Continues the runs that stopped as converged in the loop while their float64 rel_error is >= eps,
  with a tighter in-loop threshold, up to CONFIRM_ROUNDS times; returns the final Outcome and its
  float64 rel_errors (None when not computed), which finalize reuses.

  Not for loss=samples: there the loop stops on the training error, which says nothing about the
  population error; a run that stopped with population error >= eps is reported `unconfirmed`.
  """
  if c.loss == 'samples':
    return out, None
  for _ in range(CONFIRM_ROUNDS):
    rels = rel_errors(c, cells, bucket, out, targets, scales)
    status = np.asarray(out.state.status)
    redo = [i for i, r in enumerate(rels) if status[i] == algorithms.CONVERGED and r is not None and r >= c.eps]
    if not redo:
      return out, rels
    inloop = np.asarray(out.state.rel_err, np.float64)
    ratio = min(float(inloop[i]) / rels[i] for i in redo)
    alg = dataclasses.replace(alg, eps=alg.eps * float(np.clip(0.9 * ratio, 1 / 16, 0.9)))
    logging.info('%s: %d runs stopped as converged in the loop but have float64 rel_error >= eps=%g; '
                 'continuing them with in-loop threshold %g', label, len(redo), c.eps, alg.eps)
    new_status = status.copy()
    new_status[redo] = algorithms.RUNNING
    more = sweep.run_program(alg, data, cells, init_state=out.state._replace(status=new_status),
                             label=label, **run_kwargs)
    trace = {k: np.concatenate([out.trace[k], more.trace[k]], axis=1) for k in out.trace}
    out = more._replace(wall_s=out.wall_s + more.wall_s, trace=trace)
  return out, None


def finalize(c, alg_name, dim, cells, bucket, out: sweep.Outcome, targets, wd, is_writer,
             values: Optional[Dict] = None, fingerprint: Optional[str] = None,
             scales: Optional[Dict[int, float]] = None, rels: Optional[List] = None) -> List[Dict]:
  """One results row per cell; saves learned factors when asked.

  c: the config of the program (every cell-axis field at its value); values: {axis field: value}
  of the program (experiments.cell_fields), which rows and file names carry. fingerprint:
  results.config_fingerprint of the config, stamped on every row (config_fp). scales: per seed, the
  power of two the target was divided by on the host. rels: the cells' float64 rel_errors when
  already computed (confirm), else computed here.

  rel_error is recomputed on the host in float64 from the exported CP tensor (or the dense model
  for algorithms whose model is not a CP tensor); a run whose export is not finite is diverged. The
  status agrees with that number: converged iff rel_error < eps; 'unconfirmed' if the in-loop test
  stopped the run as converged but rel_error >= eps; else max_steps (or diverged: rel_error null).
  Params files are written (atomically, by exact name) before the rows are returned, so appending the
  rows is the last step of a program and a killed finish is redone from the final checkpoint.
  """
  values = values or {}
  tag = file_tag(c, values)
  cell = cell_fields(c, alg_name, values)
  declared = set(registry.get(alg_name).row_fields)
  if not set(out.extras) <= declared:
    raise ValueError(f'{alg_name}: extras {sorted(set(out.extras) - declared)} are not in its registry row_fields')
  if out.exported is not None and out.exported[0].shape[1] % bucket:
    raise ValueError(f'{alg_name}.export returned {out.exported[0].shape[1]} components, not a multiple of '
                     f'the bucket {bucket}')
  rows = []
  exports = _exports(out, cells, bucket, scales)
  rels = rel_errors(c, cells, bucket, out, targets, scales, exports) if rels is None else rels
  progress = _Progress(f'{alg_name} d={dim}: finishing rows', len(cells))
  for i, (width, seed) in enumerate(cells):
    progress(i)
    code = int(out.state.status[i])
    t = targets[seed]
    coeffs, factors = exports[i] if exports[i] is not None else (None, None)
    rel = rels[i]
    if rel is None:
      status = 'diverged'
    elif rel < c.eps:
      status = 'converged'
    elif code == algorithms.CONVERGED:
      status = 'unconfirmed'
    else:
      status = 'max_steps'
    name = f'{alg_name}{tag}_l{c.order}_d{dim}_m{width}_s{seed}.npz'  # of its params and trajectory files
    leaves = jax.tree.leaves(jax.tree.map(lambda x: x[i], out.state.params))
    leaves0 = jax.tree.leaves(jax.tree.map(lambda x: x[i], out.state.params0))
    row = {'algorithm': alg_name, 'order': c.order, 'dim': dim, 'rank': cell['rank'], 'width': width,
           'seed': seed, 'rel_error': rel, 'status': status, 'steps': int(out.state.step[i]),
           'movement': results.clean_number(metrics.movement(leaves, leaves0, width)),
           'recovered_fraction': None, 'params_file': None, 'wall_s': round(out.wall_s, 3),
           'batch_runs': len(cells), 'bucket': bucket}
    row.update({k: v for k, v in cell.items() if k != 'rank'})
    if c.loss == 'samples':
      row['num_samples'] = int(c.num_samples)
    row.update({k: _number(v[i]) for k, v in out.extras.items()})
    if coeffs is not None and rel is not None:
      if t.factors is not None:
        row.update(metrics.recovery(coeffs, factors, t.coeffs, t.factors, c.order))
      if c.save_params:
        if is_writer:
          results.save_npz_atomic(os.path.join(wd.params_dir, name), sync_dir=False, coeffs=coeffs, factors=factors)
        row['params_file'] = os.path.join('params', name)
    if out.trace and is_writer:
      tr = {k: v[i] for k, v in out.trace.items()}
      s = (scales or {}).get(seed, 1.0)
      if s != 1.0 and 'aligned_weight' in tr:
        tr['aligned_weight'] = np.asarray(tr['aligned_weight'], np.float64) * s
      results.save_npz_atomic(os.path.join(wd.trajectories_dir, name), sync_dir=False,
                              iteration=np.arange(1, next(iter(out.trace.values())).shape[1] + 1) * c.trace_every,
                              **tr)
      row['trajectory_file'] = os.path.join('trajectories', name)
    if fingerprint is not None:
      row['config_fp'] = fingerprint
    rows.append(row)
  if is_writer:  # the files' renames are durable before the rows that name them are appended
    results.fsync_dir(wd.params_dir)
    results.fsync_dir(wd.trajectories_dir)
  return rows


def plot_only(workdir: str) -> List[str]:
  """Redraws figures/*.png of a workdir from its config.json (eps) and results.jsonl, computing
  nothing; returns the paths written. WorkdirError (an `error:` line naming the file) if the workdir
  has no usable config.json, a line of results.jsonl is not a row, there are no results, or figures/
  is not a folder."""
  wd = results.Workdir(workdir, defaults=config_lib.base_config().to_dict())  # [reliab] rows checked vs config.json
  if not os.path.isdir(workdir):
    raise results.WorkdirError(f'--workdir {workdir!r} is not a folder')
  cfg = wd.read_config()
  if cfg is None:
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.config_path} is missing (not a workdir of a run)')
  eps = cfg.get('eps')
  if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1):
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.config_path} has no valid eps (a number in (0, 1)), '
                               f'got {eps!r}')
  rows = wd.load_results()
  if not rows:
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.results_path} has no finished runs')
  if os.path.lexists(wd.figures_dir) and not os.path.isdir(wd.figures_dir):
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.figures_dir} is not a folder; move it away')
  try:
    return plots.draw_all(rows, eps, wd.figures_dir, workdir=wd.path)
  except OSError as e:
    raise results.WorkdirError(f'--workdir {workdir!r}: cannot write figures into {wd.figures_dir} '
                               f'({e.strerror or e})') from None


class _Progress:
  """Logs `label: i/n` at most every `every_s` seconds inside a long host loop."""

  def __init__(self, label: str, n: int, every_s: float = 10.0):
    self.label, self.n, self.every_s, self.last = label, n, every_s, time.time()

  def __call__(self, i: int):
    if time.time() - self.last >= self.every_s:
      logging.info('%s: %d/%d', self.label, i, self.n)
      self.last = time.time()


def _phase(msg: str, *args):
  """Logs the start of a phase that may take a while; returns a function logging its end."""
  t0 = time.time()
  logging.info(msg + '...', *args)
  return lambda: logging.info(msg + ': done in %.1fs', *args, time.time() - t0)


def run(c: ml_collections.ConfigDict, workdir: str,
        on_chunk: Optional[Callable[[int], None]] = None, figures: bool = True) -> Dict:
  """Runs (or resumes) the experiment described by `c` into `workdir`; returns the summary.

  Everything the user gives (config, target) is checked before anything is written. The writer
  process holds the workdir's lock until it returns (results.Workdir.open). figures=False skips
  figures/ (overparam.decompose: drawing is most of a small run's time).
  """
  config_lib.validate(c)
  memory.check(c)  # before anything is allocated or written
  file_array, digest = None, None
  if c.target.kind == 'file':  # [reliab] read once; its sha256 goes into the fingerprint (results.with_inputs)
    file_array, digest = tensors.load_target(c.target.path, c.order, c.dims, c.rank)
  seeds = [c.seed + s for s in range(c.num_seeds)]
  done_targets = _phase('building targets for %d seeds x %d dims', len(seeds), len(c.dims))
  all_targets = {}
  specs = [registry.get(a) for a in c.algorithms]
  scale_free = all(s.scale_free for s in specs)
  for cc, common in config_lib.common_configs(c):
    for dim in c.dims:
      progress = _Progress(f'building targets d={dim} {common}', len(seeds))
      targets = {}
      for i, s in enumerate(seeds):
        progress(i)
        targets[s] = make_target(cc, dim, s, file_array)
        check_target(cc, targets[s], dim, s, scale_free=scale_free)
      all_targets[(_key(common), dim)] = targets
  done_targets()
  is_writer = jax.process_index() == 0
  wd = results.Workdir(workdir, defaults=config_lib.base_config().to_dict())  # [reliab] defaults passed in
  resolved = results.with_inputs(c.to_dict(), {'target.path': digest})  # [reliab] content of the input files
  # [reliab] every process raises the same error when the writer's open (the lock) refuses the run
  fp = distributed.every_process(
      lambda: wd.open({**resolved, 'provenance': provenance()} if is_writer else resolved, is_writer),
      undo=wd.unlock)
  try:
    return _run_programs(c, wd, fp, seeds, all_targets, is_writer, on_chunk, figures)
  finally:
    wd.unlock()


def _key(common: Dict) -> tuple:
  """A hashable key of the common axis values of one target set."""
  return tuple(sorted(common.items()))


def _run_programs(c, wd, fp, seeds, all_targets, is_writer, on_chunk, figures=True) -> Dict:
  rows = wd.load_results(fp)
  done = {results.cell_id(r) for r in rows}
  ckpt_names = []
  for cc, common in config_lib.common_configs(c):  # axes every algorithm shares (rank, ...) may change T*
    for dim in c.dims:
      targets = all_targets[(_key(common), dim)]
      for alg_name in c.algorithms:
        spec = registry.get(alg_name)
        scales = ({s: target_scale(t, c.order) for s, t in targets.items()}
                  if spec.scale_free else {s: 1.0 for s in targets})
        dev_targets = {s: scaled_target(t, scales[s]) for s, t in targets.items()}
        for ca, values in config_lib.algorithm_configs(cc, alg_name):
          values = {**common, **values}
          tag = file_tag(ca, values)
          cell = cell_fields(ca, alg_name, values)
          one = spec.is_one_program(ca)
          for bucket_ws in spec.width_groups(config_lib.widths_of(c, alg_name), ca):
            bucket = max(bucket_ws)
            ckpt_name = f'{alg_name}{tag}_l{ca.order}_d{dim}_B{bucket}.npz'
            ckpt_names.append(ckpt_name)
            cells = [(m, s) for m in bucket_ws for s in seeds
                     if results.cell_id(dict(algorithm=alg_name, order=ca.order, dim=dim, width=m, seed=s,
                                             **cell)) not in done]
            if not cells:
              continue
            run_seeds = sorted({s for _, s in cells})
            runs = [(bucket, s) for s in run_seeds] if one else cells  # one program: a run per seed
            alg = build_algorithm(alg_name, ca, dim, bucket, bucket_ws if one else ())
            label = f'{alg_name}{tag} l={ca.order} d={dim} widths={bucket_ws}'
            ckpt = os.path.join(wd.ckpt_dir, ckpt_name)
            end = _phase('%s: building run data for %d runs', label, len(runs))
            data = run_data(ca, runs, dev_targets, bucket, config_lib.resolve_loss(ca))
            end()
            run_kwargs = dict(chunk_steps=config_lib.chunk_of(ca), trace_every=c.trace_every, is_writer=is_writer,
                              on_chunk=on_chunk)
            out = sweep.run_program(alg, data, runs, checkpoint_path=ckpt, run_fingerprint=fp,  # [reliab]
                                    checkpoint_every_s=c.checkpoint_every_s, label=label, **run_kwargs)
            rels = None
            if one:  # solved exactly in init: no in-loop stop to confirm
              out = split_widths(out, list(bucket_ws), run_seeds, cells)
            else:
              out, rels = confirm(ca, alg, data, cells, bucket, out, targets, scales, run_kwargs, label)
            end = _phase('%s: finishing %d runs (rows%s)', label, len(cells), ', params' if c.save_params else '')
            new = finalize(ca, alg_name, dim, cells, bucket, out, targets, wd, is_writer, values=values,
                           fingerprint=fp, scales=scales, rels=rels)
            if is_writer:
              wd.append_results(new)
              sweep.remove_checkpoint(ckpt)
            end()
            rows.extend(new)
            logging.info('%s: %d runs in %.1fs', label, len(cells), out.wall_s)
  summary = analysis.summarize(rows, c.eps)
  if is_writer:
    wd.remove_checkpoints(ckpt_names)  # every program is finished: its checkpoint is not needed any more
    results.write_json_atomic(wd.summary_path, summary)
    if figures:
      end = _phase('drawing figures')
      try:
        plots.draw_all(rows, c.eps, wd.figures_dir, workdir=wd.path)
      except OSError as e:  # the rows are safe; only the figures are missing (--plot_only redraws them)
        raise results.WorkdirError(f'--workdir {wd.path!r}: cannot write figures into {wd.figures_dir} '
                                   f'({e.strerror or e}); the results are complete, redraw with --plot_only') from None
      end()
  return summary
