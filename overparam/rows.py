"""The workdir rows of a program: its Outcome -> one results row per (width, seed, axis value) cell.

rel_error is recomputed on the host in float64 from the exported CP tensor (or the dense model for
algorithms whose model is not a CP tensor); a run whose export is not finite is diverged. The status
agrees with that number (core.final_status): converged iff rel_error < eps; unconfirmed if the in-loop
test stopped the run as converged but rel_error >= eps; else max_steps (diverged: rel_error null).
"""

import os
from typing import Dict, List, Optional, Sequence

import jax
import numpy as np

from overparam import config_lib, core, engine, metrics, objectives, planner, registry, results, targets, tensors


def split_widths(out: engine.Outcome, widths: List[int], runs, cells) -> engine.Outcome:
  """A one-program Outcome (runs (seed, value) with leaves (runs, G, ...); trace (runs, T, G, ...)) ->
  the Outcome of `cells` [(width, seed, value)], each width in `widths`."""
  index = {(s, v): i for i, (_, s, v) in enumerate(runs)}
  pick = np.array([index[(s, v)] * len(widths) + widths.index(m) for m, s, v in cells], np.int64)
  flat = lambda t: None if t is None else jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:])[pick], t)
  trace = {k: np.moveaxis(v, 2, 1).reshape((-1, v.shape[1]) + v.shape[3:])[pick] for k, v in out.trace.items()}
  return out._replace(state=flat(out.state), exported=flat(out.exported), dense=flat(out.dense),
                      extras=flat(out.extras), trace=trace)


def exports(out: engine.Outcome, cells, bucket: int, scales: Optional[Dict[int, float]] = None):
  """[(coeffs, factors) or None] per cell: the exported real components, in the target's units."""
  got = []
  for i, (width, seed, _) in enumerate(cells):
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


def _rel_error_dense(model: np.ndarray, t: tensors.Target, order: int) -> Optional[float]:
  t_star = (np.asarray(t.dense, np.float64) if t.dense is not None
            else objectives.np_dense(np.asarray(t.coeffs, np.float64), np.asarray(t.factors, np.float64), order))
  return results.clean_number(np.linalg.norm(np.asarray(model, np.float64) - t_star) / np.linalg.norm(t_star))


def rel_errors(order: int, cells, bucket: int, out: engine.Outcome, seed_targets, scales=None,
               exported=None) -> List[Optional[float]]:
  """The float64 rel_error of each cell (None: not finite, diverged); exported: exports(out, ...) when
  the caller has it."""
  rels = []
  exported = exports(out, cells, bucket, scales) if exported is None else exported
  for i, ((_, seed, _), ex) in enumerate(zip(cells, exported)):
    t = seed_targets[seed]
    rel = None
    if int(out.state.status[i]) != core.DIVERGED:
      if ex is not None:
        if np.all(np.isfinite(ex[0])) and np.all(np.isfinite(ex[1])):
          rel = results.clean_number(objectives.rel_error_f64(ex[0], ex[1], t, order))
      elif out.dense is not None and np.all(np.isfinite(out.dense[i])):
        s = (scales or {}).get(seed, 1.0)
        rel = _rel_error_dense(np.asarray(out.dense[i], np.float64) * s, t, order)
    rels.append(rel)
  return rels


def cell_fields(c, name: str, values: Dict) -> Dict:
  """Row fields of the cell axes: rank (targets.row_rank: None for a dense file target of unknown rank),
  alpha (the config's for alpha-scaled algorithms, else None) and,
  when config.axes has other fields, each one's value (None where `name` does not read it) and `axes`,
  their names (results.cell_id uses them)."""
  out = {'rank': targets.row_rank(c), 'alpha': float(c.alpha) if registry.get(name).alpha_scaled else None}
  extra = config_lib.generic_axes(c)
  if extra:
    out.update({f: values.get(f) for f in extra})
    out['axes'] = list(extra)
  return out


def _number(x):
  """An extras value for JSON: int for integer arrays, else clean_number."""
  if np.issubdtype(np.asarray(x).dtype, np.integer):
    return int(x)
  return results.clean_number(x)


def finalize(prog: planner.Program, cells, out: engine.Outcome, seed_targets, wd, is_writer: bool,
             fingerprint: Optional[str] = None, scales: Optional[Dict[int, float]] = None,
             rels: Optional[List] = None) -> List[Dict]:
  """One results row per cell (width, seed, value index) of a program; saves learned factors when asked.

  seed_targets: T* per seed in the target's units. fingerprint: results.config_fingerprint of the
  config, stamped on every row (config_fp). scales: per seed, the power of two the target was divided
  by on the host. rels: the cells' float64 rel_errors when already computed (confirm), else here.
  Params files are written (atomically, by exact name) before the rows are returned, so appending the
  rows is the last step of a program and a killed finish is redone from the final checkpoint.
  """
  bucket, order, dim = prog.bucket, prog.task.order, prog.dim
  declared = set(prog.spec.row_fields)
  if not set(out.extras) <= declared:
    raise ValueError(f'{prog.name}: extras {sorted(set(out.extras) - declared)} are not in its registry row_fields')
  if out.exported is not None and out.exported[0].shape[1] % bucket:
    raise ValueError(f'{prog.name}.export returned {out.exported[0].shape[1]} components, not a multiple of '
                     f'the bucket {bucket}')
  exported = exports(out, cells, bucket, scales)
  rels = rel_errors(order, cells, bucket, out, seed_targets, scales, exported) if rels is None else rels
  rows = []
  for i, (width, seed, v) in enumerate(cells):
    c = prog.configs[v]
    values = prog.all_values(v)
    cell = cell_fields(c, prog.name, values)
    t = seed_targets[seed]
    coeffs, factors = exported[i] if exported[i] is not None else (None, None)
    rel = rels[i]
    code = core.final_status(int(out.state.status[i]), np.nan if rel is None else rel, c.eps, np)
    status = core.STATUS_NAMES[int(code)]
    if status == 'plateau':  # not a rows status: the engine never runs the plateau rule
      status = 'max_steps'
    name = f'{prog.name}{planner.file_tag(c, values)}_l{order}_d{dim}_m{width}_s{seed}.npz'
    leaves = jax.tree.leaves(jax.tree.map(lambda x: x[i], out.state.params))
    leaves0 = jax.tree.leaves(jax.tree.map(lambda x: x[i], out.state.params0))
    row = {'algorithm': prog.name, 'order': order, 'dim': dim, 'rank': cell['rank'], 'width': width,
           'seed': seed, 'rel_error': rel, 'status': status, 'steps': int(out.state.step[i]),
           'movement': results.clean_number(metrics.movement(leaves, leaves0, width)),
           'recovered_fraction': None, 'params_file': None, 'wall_s': round(out.wall_s, 3),
           'batch_runs': len(cells), 'bucket': bucket}
    row.update({k: val for k, val in cell.items() if k != 'rank'})
    if prog.task.loss == 'samples':
      row['num_samples'] = int(c.num_samples)
    row.update({k: _number(val[i]) for k, val in out.extras.items()})
    if coeffs is not None and rel is not None:
      if t.factors is not None:
        row.update(metrics.recovery(coeffs, factors, t.coeffs, t.factors, order))
      if c.save_params:
        if is_writer:
          results.save_npz_atomic(os.path.join(wd.params_dir, name), sync_dir=False, coeffs=coeffs, factors=factors)
        row['params_file'] = os.path.join('params', name)
    if out.trace and is_writer:
      tr = {k: val[i] for k, val in out.trace.items()}
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


def missing_cells(prog: planner.Program, seeds: Sequence[int], done: set) -> List:
  """The program's cells that have no row yet (results.cell_id of the row they would write)."""
  out = []
  for m, s, v in prog.cells(seeds):
    cell = cell_fields(prog.configs[v], prog.name, prog.all_values(v))
    key = results.cell_id(dict(algorithm=prog.name, order=prog.task.order, dim=prog.dim, width=m, seed=s, **cell))
    if key not in done:
      out.append((m, s, v))
  return out
