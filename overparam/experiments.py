"""Config -> targets -> one compiled program per (algorithm, order, d, width bucket) -> workdir.

`run(config, workdir)` is the whole job: it validates, resumes from whatever the workdir already
holds (only missing cells are computed), appends one results row per finished run, and writes
summary.json and the figures.
"""

import os
import subprocess
from typing import Callable, Dict, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from overparam import (algorithms, analysis, beyond_lazy, config_lib, lazy, memory, metrics,
                       objectives, plots, results, sweep, tensors)


def seed_keys(seed: int):
  """(target, init, reinit) keys of one seed, each derived from PRNGKey(seed) by fold_in."""
  key = jax.random.PRNGKey(seed)
  return tuple(jax.random.fold_in(key, i) for i in range(3))


def dtype_of(c) -> jnp.dtype:
  return jnp.float64 if c.x64 else jnp.float32


def _build_gd(c, dim: int, bucket: int):
  spec = objectives.Spec(c.order, c.parametrization, config_lib.resolve_loss(c), c.reg)
  return algorithms.GD(spec=spec, dim=dim, bucket=bucket, steps=c.steps, lr=c.lr,
                       optimizer=c.optimizer, init_scale=c.init_scale, alpha=c.alpha,
                       eps=c.eps, dtype=dtype_of(c))


def _build_beyond_lazy(c, dim: int, bucket: int):
  b = c.beyond_lazy
  spec = objectives.Spec(c.order, 'homogeneous', config_lib.resolve_loss(c), b.reg)
  return beyond_lazy.BeyondLazy(spec=spec, dim=dim, bucket=bucket, steps=c.steps, lr=b.lr,
                                optimizer=c.optimizer, init_scale=b.init_scale,
                                reinit_threshold=b.reinit_threshold, epoch_length=b.epoch_length,
                                epoch_growth=b.epoch_growth, eps=c.eps, dtype=dtype_of(c))


def _lazy_kwargs(c, dim: int, bucket: int):
  spec = objectives.Spec(c.order, c.parametrization, 'dense', 0.0)
  return dict(spec=spec, dim=dim, bucket=bucket, eps=c.eps, init_scale=c.init_scale,
              symmetric_init=c.lazy.symmetric_init, ntk_scaling=c.lazy.ntk_scaling, dtype=dtype_of(c))


def _build_lazy(c, dim: int, bucket: int):
  return lazy.Lazy(steps=c.steps, lr_scale=c.lazy.lr_scale, momentum=c.lazy.momentum,
                   power_iters=c.lazy.power_iters, **_lazy_kwargs(c, dim, bucket))


def _build_lazy_exact(c, dim: int, bucket: int, widths=()):
  return lazy.LazyExact(steps=1, widths=tuple(widths), **_lazy_kwargs(c, dim, bucket))


# name -> builder(config, dim, bucket) returning an algorithm (see algorithms.py for the protocol).
BUILDERS = {'gd': _build_gd, 'beyond_lazy': _build_beyond_lazy, 'lazy': _build_lazy,
            'lazy_exact': _build_lazy_exact}


# Algorithms whose model is alpha-scaled (config.alpha, or the cell axis config.alphas); rows of the
# others carry alpha = None.
ALPHA_ALGORITHMS = ('gd',)


def alpha_configs(c: ml_collections.ConfigDict, alg_name: str):
  """[(alpha, config with config.alpha = alpha)] for one algorithm: one per config.alphas (or
  config.alpha when that is empty) for alpha-scaled algorithms, [(None, c)] for the others."""
  if alg_name not in ALPHA_ALGORITHMS:
    return [(None, c)]
  out = []
  for a in (tuple(c.alphas) or (c.alpha,)):
    ca = c
    if a != c.alpha:
      ca = c.copy_and_resolve_references()
      ca.alpha = float(a)
    out.append((float(a), ca))
  return out


def rank_config(c: ml_collections.ConfigDict, rank: int) -> ml_collections.ConfigDict:
  """c with config.rank = rank (one value of the cell axis config.ranks)."""
  if rank == c.rank:
    return c
  cr = c.copy_and_resolve_references()
  cr.rank = int(rank)
  return cr


def file_tag(c: ml_collections.ConfigDict, alpha: Optional[float]) -> str:
  """Part of checkpoint/params/trajectory names for the cell axes config.ranks and config.alphas."""
  return (f'_r{c.rank}' if c.ranks else '') + (f'_a{alpha:g}' if c.alphas and alpha is not None else '')


def build_algorithm(name: str, c: ml_collections.ConfigDict, dim: int, bucket: int, widths=()):
  """widths: the grid of a one-program algorithm's program (see program_widths); () otherwise."""
  if name not in BUILDERS:
    raise config_lib.ConfigError(f'config.algorithms: unknown algorithm {name!r}')
  return BUILDERS[name](c, dim, bucket, widths) if widths else BUILDERS[name](c, dim, bucket)


# ------------------------------------------------------------------------------------------------
# One-program algorithms (class attribute one_program = True, e.g. lazy.LazyExact): the whole width
# grid of a (d, cell axes) runs as ONE program whose runs are the seeds; a run computes every width
# (state leaves with a leading width axis) and its outcome is split into the usual (width, seed)
# cells before finalize, so sweep.run_program, finalize, the rows and the resume by missing cells
# are those of any other algorithm.
ONE_PROGRAM_CLASSES = {'lazy_exact': lazy.LazyExact}  # the lead wires this to the algorithm registry


def is_one_program(name: str) -> bool:
  return getattr(ONE_PROGRAM_CLASSES.get(name), 'one_program', False)


def program_widths(name: str, widths) -> List[List[int]]:
  """The width groups of an algorithm's programs: the whole grid for one-program algorithms, else
  sweep.bucket_widths (largest <= 2x smallest)."""
  if is_one_program(name):
    return [sorted(set(int(w) for w in widths))]
  return sweep.bucket_widths(widths)


def split_widths(out: sweep.Outcome, group: List[int], seeds: List[int], cells) -> sweep.Outcome:
  """A one-program Outcome (runs = seeds, leaves (runs, G, ...); trace (runs, T, G, ...)) -> the
  Outcome of `cells` [(width, seed)], each a (width in group, seed in seeds)."""
  pick = np.array([seeds.index(s) * len(group) + group.index(m) for m, s in cells], np.int64)
  flat = lambda t: None if t is None else jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:])[pick], t)
  trace = {k: np.moveaxis(v, 2, 1).reshape((-1, v.shape[1]) + v.shape[3:])[pick] for k, v in out.trace.items()}
  return out._replace(state=flat(out.state), exported=flat(out.exported), dense=flat(out.dense),
                      extras=flat(out.extras), trace=trace)


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
  """Host RunData for the cells (width, seed) of one program, stacked on a leading run axis."""
  dt = np.dtype(dtype_of(c))
  rows = []
  for width, seed in cells:
    t = targets[seed]
    if loss == 'dense' and t.dense is None:  # build T* once, not at every step
      t = t._replace(dense=np.asarray(tensors.dense_cp(jnp.asarray(t.coeffs), jnp.asarray(t.factors), c.order)))
    _, init_key, reinit_key = seed_keys(seed)
    rows.append(algorithms.RunData(
        init_key=np.asarray(init_key), reinit_key=np.asarray(reinit_key),
        mask=(np.arange(bucket) < width).astype(dt), signs=signs_of(c, bucket).astype(dt),
        width=np.asarray(width, dt), target=t,
        target_sq=np.asarray(tensors.target_sq_norm(jax.tree.map(jnp.asarray, targets[seed]), c.order), dt)))
  return jax.tree.map(lambda *xs: np.stack(xs), *rows)


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


def finalize(c, alg_name, dim, cells, bucket, out: sweep.Outcome, targets, wd, is_writer,
             alpha: Optional[float] = None) -> List[Dict]:
  """One results row per cell; saves learned factors when asked.

  alpha: the row's alpha (None for algorithms that are not alpha-scaled); file names carry it when
  config.alphas makes alpha a cell axis.

  rel_error is recomputed on the host in float64 from the exported CP tensor (or the dense model
  for algorithms whose model is not a CP tensor); a run whose export is not finite is diverged.
  """
  tag = file_tag(c, alpha)
  rows = []
  for i, (width, seed) in enumerate(cells):
    code = int(out.state.status[i])
    t = targets[seed]
    coeffs = factors = None
    if out.exported is not None:
      k = out.exported[0].shape[1] // bucket
      keep = np.tile(np.arange(bucket) < width, k)
      coeffs, factors = out.exported[0][i][keep], out.exported[1][i][keep]
    rel = None
    if code != algorithms.DIVERGED:
      if coeffs is not None:
        if np.all(np.isfinite(coeffs)) and np.all(np.isfinite(factors)):
          rel = results.clean_number(objectives.rel_error_f64(coeffs, factors, t, c.order))
      elif out.dense is not None and np.all(np.isfinite(out.dense[i])):
        rel = _rel_error_dense(out.dense[i], t, c.order)
      if rel is None:
        code = algorithms.DIVERGED
    if code == algorithms.DIVERGED:
      status = 'diverged'
    elif code == algorithms.CONVERGED or rel < c.eps:
      status = 'converged'
    else:
      status = 'max_steps'
    leaves = jax.tree.leaves(jax.tree.map(lambda x: x[i], out.state.params))
    leaves0 = jax.tree.leaves(jax.tree.map(lambda x: x[i], out.state.params0))
    row = {'algorithm': alg_name, 'order': c.order, 'dim': dim, 'rank': c.rank, 'width': width,
           'seed': seed, 'rel_error': rel, 'status': status, 'steps': int(out.state.step[i]),
           'movement': results.clean_number(metrics.movement(leaves, leaves0, width)),
           'recovered_fraction': None, 'params_file': None, 'wall_s': round(out.wall_s, 3),
           'batch_runs': len(cells), 'bucket': bucket}
    row['alpha'] = alpha
    row.update({k: _number(v[i]) for k, v in out.extras.items()})
    if coeffs is not None and rel is not None:
      if t.factors is not None:
        row.update(metrics.recovery(coeffs, factors, t.coeffs, t.factors, c.order))
      if c.save_params:
        name = f'{alg_name}{tag}_l{c.order}_d{dim}_m{width}_s{seed}.npz'
        if is_writer:
          results.save_npz_atomic(os.path.join(wd.params_dir, name), coeffs=coeffs, factors=factors)
        row['params_file'] = os.path.join('params', name)
    if out.trace and is_writer:
      name = f'{alg_name}{tag}_l{c.order}_d{dim}_m{width}_s{seed}.npz'
      results.save_npz_atomic(os.path.join(wd.trajectories_dir, name),
                              iteration=np.arange(1, next(iter(out.trace.values())).shape[1] + 1) * c.trace_every,
                              **{k: v[i] for k, v in out.trace.items()})
      row['trajectory_file'] = os.path.join('trajectories', name)
    rows.append(row)
  return rows


def plot_only(workdir: str) -> List[str]:
  """Redraws figures/*.png of a workdir from its config.json (eps) and results.jsonl, computing
  nothing; returns the paths written. WorkdirError (an `error:` line) if the workdir has no
  config.json or no results."""
  import json  # noqa: PLC0415
  wd = results.Workdir(workdir)
  if not os.path.isfile(wd.config_path):
    raise results.WorkdirError(f'--workdir: {workdir!r} has no config.json (not a workdir of a run)')
  with open(wd.config_path) as f:
    eps = json.load(f)['eps']
  rows = wd.load_results()
  if not rows:
    raise results.WorkdirError(f'--workdir: {workdir!r} has no finished runs in results.jsonl')
  return plots.draw_all(rows, eps, wd.figures_dir, workdir=wd.path)


def run(c: ml_collections.ConfigDict, workdir: str,
        on_chunk: Optional[Callable[[int], None]] = None) -> Dict:
  """Runs (or resumes) the experiment described by `c` into `workdir`; returns the summary."""
  config_lib.validate(c)
  memory.check(c)  # before anything is allocated or written
  file_array = None
  if c.target.kind == 'file' and tensors.is_cp_file(c.target.path):
    file_array = tensors.load_target_cp(c.target.path, c.order, c.dims, c.rank)
  elif c.target.kind == 'file':
    file_array = tensors.load_target_file(c.target.path, c.order, c.dims)
  is_writer = jax.process_index() == 0
  wd = results.Workdir(workdir)
  resolved = c.to_dict()
  wd.check_config(resolved)
  if is_writer:
    wd.prepare()
    wd.write_config({**resolved, 'provenance': provenance()})
  rows = wd.load_results()
  done = {results.cell_id(r) for r in rows}
  seeds = [c.seed + s for s in range(c.num_seeds)]
  loss = config_lib.resolve_loss(c)
  for rank, dim in ((k, d) for k in config_lib.ranks_of(c) for d in c.dims):
    cr = rank_config(c, rank)
    targets = {s: make_target(cr, dim, s, file_array) for s in seeds}
    for alg_name, (alpha, ca) in ((n, ac) for n in c.algorithms for ac in alpha_configs(cr, n)):
      tag = file_tag(ca, alpha)
      for bucket_ws in program_widths(alg_name, config_lib.widths_of(c, alg_name)):
        bucket = max(bucket_ws)
        cells = [(m, s) for m in bucket_ws for s in seeds
                 if results.cell_id(dict(algorithm=alg_name, order=c.order, dim=dim, rank=rank, width=m,
                                         seed=s, alpha=alpha)) not in done]
        if not cells:
          continue
        one = is_one_program(alg_name)
        run_seeds = sorted({s for _, s in cells})
        runs = [(bucket, s) for s in run_seeds] if one else cells  # one program: a run per seed
        alg = build_algorithm(alg_name, ca, dim, bucket, tuple(bucket_ws) if one else ())
        label = f'{alg_name}{tag} l={c.order} d={dim} widths={bucket_ws}'
        ckpt = os.path.join(wd.ckpt_dir, f'{alg_name}{tag}_l{c.order}_d{dim}_B{bucket}.npz')
        out = sweep.run_program(
            alg, run_data(cr, runs, targets, bucket, loss), runs, chunk_steps=config_lib.chunk_of(c),
            trace_every=c.trace_every,
            checkpoint_path=ckpt, checkpoint_every_s=c.checkpoint_every_s, is_writer=is_writer,
            label=label, on_chunk=on_chunk)
        if one:
          out = split_widths(out, bucket_ws, run_seeds, cells)
        new = finalize(ca, alg_name, dim, cells, bucket, out, targets, wd, is_writer, alpha=alpha)
        if is_writer:
          wd.append_results(new)
          sweep.remove_checkpoint(ckpt)
        rows.extend(new)
        logging.info('%s: %d runs in %.1fs', label, len(cells), out.wall_s)
  summary = analysis.summarize(rows, c.eps)
  if is_writer:
    for f in os.listdir(wd.ckpt_dir):  # every program is finished: no checkpoint is needed any more
      os.remove(os.path.join(wd.ckpt_dir, f))
    results.write_json_atomic(wd.summary_path, summary)
    plots.draw_all(rows, c.eps, wd.figures_dir, workdir=wd.path)
  return summary
