"""Thresholds m* and fitted scaling exponents from result rows."""

import collections
from typing import Dict, List, Optional, Sequence

import numpy as np


def smallest_passing(success: Dict) -> Optional[int]:
  """The m* rule, the one place it is written: the smallest key (a width, a sample size, ...) at which
  at least half of the runs succeed. success: {key: [bool per seed]}; None if no key passes."""
  for k in sorted(success):
    ok = list(success[k])
    if ok and 2 * sum(ok) >= len(ok):
      return int(k)
  return None


def m_star(rows: Sequence[Dict], eps: float) -> Optional[int]:
  """Smallest width at which at least half the seeds reach rel_error < eps (diverged = failed)."""
  by_width = collections.defaultdict(list)
  for r in rows:
    by_width[r['width']].append(r['rel_error'] is not None and r['rel_error'] < eps)
  return smallest_passing(by_width)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> Optional[Dict]:
  """Least-squares fit of log y = a log x + b; returns exponent a, its standard error, prefactor."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or np.unique(x).size < 2:
    return None
  lx, ly = np.log(x), np.log(y)
  a, b = np.polyfit(lx, ly, 1)
  se = None
  if x.size > 2:
    resid = ly - (a * lx + b)
    se = float(np.sqrt(np.sum(resid ** 2) / (x.size - 2) / np.sum((lx - lx.mean()) ** 2)))
  return {'exponent': float(a), 'stderr': se, 'prefactor': float(np.exp(b)), 'points': int(x.size)}


def _value_key(v):
  """Sort key for an optional number (None first)."""
  return (v is not None, v or 0.0)


def extra_of(r: Dict) -> tuple:
  """The cell-axis values of a row or entry besides algorithm, order, dim, rank: (alpha, ((field,
  value), ...) of the fields in r['axes'] (config.axes))."""
  return (r.get('alpha'), tuple((k, r.get(k)) for k in r.get('axes') or ()))


def _extra_key(extra):
  alpha, axes = extra
  return (_value_key(alpha), tuple((k, _value_key(v)) for k, v in axes))


def _with_extra(entry: Dict, extra) -> Dict:
  """Adds alpha (when not None) and each config.axes value (and `axes`, their names) to an entry."""
  alpha, axes = extra
  if alpha is not None:
    entry['alpha'] = alpha
  if axes:
    entry.update(dict(axes))
    entry['axes'] = [k for k, _ in axes]
  return entry


def thresholds(rows: Sequence[Dict], eps: float) -> List[Dict]:
  """m* per (algorithm, order, dim, rank[, alpha][, config.axes values]); entries carry alpha when
  the rows do (alpha-scaled algorithms) and each value of config.axes."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r['algorithm'], r['order'], r['dim'], r['rank'], extra_of(r))].append(r)
  keys = sorted(groups, key=lambda g: (g[:4], _extra_key(g[4])))
  return [_with_extra({'algorithm': a, 'order': o, 'dim': d, 'rank': k, 'm_star': m_star(groups[(a, o, d, k, ex)], eps)}, ex)
          for (a, o, d, k, ex) in keys]


def rank_m_star(rows: Sequence[Dict]) -> Optional[int]:
  """Smallest width at which at least half the seeds have a full tangent rank (tangent_rank = sym_dim)."""
  by_width = collections.defaultdict(list)
  for r in rows:
    by_width[r['width']].append(r['tangent_rank'] >= r['sym_dim'])
  return smallest_passing(by_width)


def tangent_rank_thresholds(rows: Sequence[Dict]) -> List[Dict]:
  """The lazy threshold the tangent space says, per (algorithm, order, dim, rank), from rows carrying
  tangent_rank (lazy_exact): rank_m_star, and the dimension count sym_dim / d = C(d+l-1, l) / d
  (m >= it is necessary for a full rank, not sufficient: the measured rank decides)."""
  groups = collections.defaultdict(list)
  for r in rows:
    if r.get('tangent_rank') is not None and r.get('sym_dim') is not None:
      groups[(r['algorithm'], r['order'], r['dim'], r['rank'], extra_of(r))].append(r)
  return [_with_extra({'algorithm': a, 'order': o, 'dim': d, 'rank': k, 'rank_m_star': rank_m_star(g),
                       'sym_dim': int(g[0]['sym_dim']), 'dimension_count': g[0]['sym_dim'] / d}, ex)
          for (a, o, d, k, ex), g in sorted(groups.items(), key=lambda kv: (kv[0][:4], _extra_key(kv[0][4])))]


def exponents(ths: Sequence[Dict], quantity: str = 'm_star') -> List[Dict]:
  """Power-law fit of `quantity` (m_star, rank_m_star, dimension_count) against d per
  (algorithm, order, rank[, alpha]), over the d where it exists."""
  groups = collections.defaultdict(list)
  for t in ths:
    if t.get(quantity) is not None:
      groups[(t['algorithm'], t['order'], t['rank'], extra_of(t))].append((t['dim'], t[quantity]))
  out = []
  for (a, o, k, ex) in sorted(groups, key=lambda g: (g[:3], _extra_key(g[3]))):
    pts = groups[(a, o, k, ex)]
    fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if fit is not None:
      out.append(_with_extra({'algorithm': a, 'order': o, 'rank': k, 'quantity': quantity, 'versus': 'dim',
                              **fit}, ex))
  return out


def rank_exponents(ths: Sequence[Dict]) -> List[Dict]:
  """Power-law fit of m* against the rank r per (algorithm, order, dim[, alpha]), where at least two
  ranks have an m* (a config.ranks sweep); entries have versus = 'rank'."""
  groups = collections.defaultdict(list)
  for t in ths:
    if t.get('m_star') is not None:
      groups[(t['algorithm'], t['order'], t['dim'], extra_of(t))].append((t['rank'], t['m_star']))
  out = []
  for (a, o, d, ex) in sorted(groups, key=lambda g: (g[:3], _extra_key(g[3]))):
    pts = groups[(a, o, d, ex)]
    fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if fit is not None:
      out.append(_with_extra({'algorithm': a, 'order': o, 'dim': d, 'quantity': 'm_star', 'versus': 'rank',
                              **fit}, ex))
  return out


def fit_steps(iteration, aligned_weight, target_weight, frac: float = 0.5) -> List[Optional[int]]:
  """Per true component j, the first recorded iteration at which the weight aligned with a_j
  (metrics.recovery's aligned_weight) reaches frac * |c*_j|; None if it never does.

  iteration (T,), aligned_weight (T, r), target_weight (r,): a trajectory of beyond_lazy.
  """
  aw = np.asarray(aligned_weight, np.float64)
  need = frac * np.abs(np.asarray(target_weight, np.float64))
  out = []
  for j in range(aw.shape[1]):
    hit = np.nonzero(aw[:, j] >= need[j])[0]
    out.append(int(iteration[hit[0]]) if hit.size else None)
  return out


def fit_order(steps: Sequence[Optional[int]]) -> List[int]:
  """Component indices in the order they were fitted (ties by index; never-fitted ones last)."""
  return sorted(range(len(steps)), key=lambda j: (steps[j] is None, steps[j] or 0, j))


def seed_thresholds(rows: Sequence[Dict], eps: float) -> List[Dict]:
  """Per (algorithm, order, dim, rank[, alpha]): each seed's own threshold, the smallest width at
  which that seed reaches rel_error < eps (None if none does); `seed_m_star` is {seed: width}.
  Their spread across seeds is the error bar of m* in the figures."""
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    key = (r['algorithm'], r['order'], r['dim'], r['rank'], extra_of(r))
    groups[key][r['seed']].append((r['width'], r['rel_error'] is not None and r['rel_error'] < eps))
  out = []
  for key in sorted(groups, key=lambda g: (g[:4], _extra_key(g[4]))):
    per_seed = {s: min((w for w, ok in cells if ok), default=None) for s, cells in sorted(groups[key].items())}
    a, o, d, k, ex = key
    out.append(_with_extra({'algorithm': a, 'order': o, 'dim': d, 'rank': k, 'seed_m_star': per_seed}, ex))
  return out


def _success_table(rows: Sequence[Dict], eps: float):
  """{(algorithm, order, rank, extra_of): {dim: (widths (W,), seeds (S,), success (W, S) bool)}}."""
  cells = collections.defaultdict(dict)
  for r in rows:
    cells[(r['algorithm'], r['order'], r['rank'], extra_of(r), r['dim'])][(r['width'], r['seed'])] = (
        r['rel_error'] is not None and r['rel_error'] < eps)
  out = collections.defaultdict(dict)
  for (a, o, k, al, d), c in cells.items():
    widths = sorted({w for w, _ in c})
    seeds = sorted({s for _, s in c})
    ok = np.array([[c.get((w, s), False) for s in seeds] for w in widths], bool)
    out[(a, o, k, al)][d] = (np.asarray(widths), seeds, ok)
  return out


def bootstrap_exponents(rows: Sequence[Dict], eps: float, samples: int = 1000, seed: int = 0,
                        level: float = 0.9) -> List[Dict]:
  """Uncertainty of the fitted exponent of m* versus d, by bootstrap over seeds.

  Per (algorithm, order, rank[, alpha][, config.axes values]): draw the seeds with replacement (the same draw for every d:
  seed s is one target per d), recompute m* at every d with the half-the-seeds rule, refit the power
  law over the d where m* exists (at least two), `samples` times. Returns the point fit (all seeds),
  the bootstrap standard deviation, the central `level` interval, and how many draws gave a fit.
  """
  rng = np.random.default_rng(seed)
  out = []
  for key, by_dim in sorted(_success_table(rows, eps).items(), key=lambda kv: (kv[0][:3], _extra_key(kv[0][3]))):
    dims = sorted(by_dim)
    seeds = sorted({s for d in dims for s in by_dim[d][1]})
    if len(dims) < 2 or any(by_dim[d][1] != seeds for d in dims):
      continue
    draws = rng.integers(0, len(seeds), size=(samples, len(seeds)))
    logd = np.log(np.asarray(dims, np.float64))
    m = np.full((samples, len(dims)), np.nan)
    for j, d in enumerate(dims):
      widths, _, ok = by_dim[d]
      frac = ok[:, draws].mean(axis=2)  # (W, samples)
      hit = frac >= 0.5
      m[:, j] = np.where(hit.any(axis=0), widths[np.argmax(hit, axis=0)], np.nan)
    exps = []
    for row in m:
      keep = np.isfinite(row)
      if keep.sum() >= 2:
        exps.append(np.polyfit(logd[keep], np.log(row[keep]), 1)[0])
    pts = [(d, m_star_from(by_dim[d])) for d in dims]
    pts = [p for p in pts if p[1] is not None]
    point = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if not exps or point is None:
      continue
    exps = np.asarray(exps)
    lo, hi = np.quantile(exps, [(1 - level) / 2, (1 + level) / 2])
    a, o, k, ex = key
    out.append(_with_extra({'algorithm': a, 'order': o, 'rank': k, 'quantity': 'm_star', 'versus': 'dim',
                            'exponent': point['exponent'], 'bootstrap_std': float(exps.std()),
                            'interval': [float(lo), float(hi)], 'level': level, 'samples': samples,
                            'fitted_samples': int(exps.size), 'seeds': len(seeds)}, ex))
  return out


def m_star_from(table) -> Optional[int]:
  """m* from one entry of _success_table (widths, seeds, success)."""
  widths, _, ok = table
  return smallest_passing({w: ok[i] for i, w in enumerate(widths)})


def summarize(rows: Sequence[Dict], eps: float) -> Dict:
  ths = thresholds(rows, eps)
  rank_ths = tangent_rank_thresholds(rows)
  exps = exponents(ths) + exponents(rank_ths, 'rank_m_star') + exponents(rank_ths, 'dimension_count')
  exps += rank_exponents(ths)
  status = collections.Counter(r['status'] for r in rows)
  out = {'eps': eps, 'thresholds': ths, 'exponents': exps, 'runs': len(rows),
         'status_counts': dict(sorted(status.items()))}
  if rank_ths:
    out['tangent_rank_thresholds'] = rank_ths
  boot = bootstrap_exponents(rows, eps)
  if boot:
    out['exponent_bootstrap'] = boot
    out['seed_thresholds'] = [{**t, 'seed_m_star': {str(s): m for s, m in t['seed_m_star'].items()}}
                              for t in seed_thresholds(rows, eps)]
  return out
