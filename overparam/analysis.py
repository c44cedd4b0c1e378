"""Thresholds m* and fitted scaling exponents from result rows."""

import collections
from typing import Dict, List, Optional, Sequence

import numpy as np


def m_star(rows: Sequence[Dict], eps: float) -> Optional[int]:
  """Smallest width at which at least half the seeds reach rel_error < eps (diverged = failed)."""
  by_width = collections.defaultdict(list)
  for r in rows:
    by_width[r['width']].append(r['rel_error'] is not None and r['rel_error'] < eps)
  for w in sorted(by_width):
    ok = by_width[w]
    if 2 * sum(ok) >= len(ok):
      return int(w)
  return None


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


def _alpha_key(alpha):
  """Sort key for an optional alpha (None first)."""
  return (alpha is not None, alpha or 0.0)


def _with_alpha(entry: Dict, alpha) -> Dict:
  if alpha is not None:
    entry['alpha'] = alpha
  return entry


def thresholds(rows: Sequence[Dict], eps: float) -> List[Dict]:
  """m* per (algorithm, order, dim, rank[, alpha]); entries carry alpha when the rows do (gd)."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r['algorithm'], r['order'], r['dim'], r['rank'], r.get('alpha'))].append(r)
  keys = sorted(groups, key=lambda g: (g[:4], _alpha_key(g[4])))
  return [_with_alpha({'algorithm': a, 'order': o, 'dim': d, 'rank': k, 'm_star': m_star(groups[(a, o, d, k, al)], eps)}, al)
          for (a, o, d, k, al) in keys]


def rank_m_star(rows: Sequence[Dict]) -> Optional[int]:
  """Smallest width at which at least half the seeds have a full tangent rank (tangent_rank = sym_dim)."""
  by_width = collections.defaultdict(list)
  for r in rows:
    by_width[r['width']].append(r['tangent_rank'] >= r['sym_dim'])
  for w in sorted(by_width):
    if 2 * sum(by_width[w]) >= len(by_width[w]):
      return int(w)
  return None


def tangent_rank_thresholds(rows: Sequence[Dict]) -> List[Dict]:
  """The lazy threshold the tangent space says, per (algorithm, order, dim, rank), from rows carrying
  tangent_rank (lazy_exact): rank_m_star, and the dimension count sym_dim / d = C(d+l-1, l) / d
  (m >= it is necessary for a full rank, not sufficient: the measured rank decides)."""
  groups = collections.defaultdict(list)
  for r in rows:
    if r.get('tangent_rank') is not None and r.get('sym_dim') is not None:
      groups[(r['algorithm'], r['order'], r['dim'], r['rank'])].append(r)
  return [{'algorithm': a, 'order': o, 'dim': d, 'rank': k, 'rank_m_star': rank_m_star(g),
           'sym_dim': int(g[0]['sym_dim']), 'dimension_count': g[0]['sym_dim'] / d}
          for (a, o, d, k), g in sorted(groups.items())]


def exponents(ths: Sequence[Dict], quantity: str = 'm_star') -> List[Dict]:
  """Power-law fit of `quantity` (m_star, rank_m_star, dimension_count) against d per
  (algorithm, order, rank[, alpha]), over the d where it exists."""
  groups = collections.defaultdict(list)
  for t in ths:
    if t.get(quantity) is not None:
      groups[(t['algorithm'], t['order'], t['rank'], t.get('alpha'))].append((t['dim'], t[quantity]))
  out = []
  for (a, o, k, al) in sorted(groups, key=lambda g: (g[:3], _alpha_key(g[3]))):
    pts = groups[(a, o, k, al)]
    fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if fit is not None:
      out.append(_with_alpha({'algorithm': a, 'order': o, 'rank': k, 'quantity': quantity, 'versus': 'dim',
                              **fit}, al))
  return out


def rank_exponents(ths: Sequence[Dict]) -> List[Dict]:
  """Power-law fit of m* against the rank r per (algorithm, order, dim[, alpha]), where at least two
  ranks have an m* (a config.ranks sweep); entries have versus = 'rank'."""
  groups = collections.defaultdict(list)
  for t in ths:
    if t.get('m_star') is not None:
      groups[(t['algorithm'], t['order'], t['dim'], t.get('alpha'))].append((t['rank'], t['m_star']))
  out = []
  for (a, o, d, al) in sorted(groups, key=lambda g: (g[:3], _alpha_key(g[3]))):
    pts = groups[(a, o, d, al)]
    fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if fit is not None:
      out.append(_with_alpha({'algorithm': a, 'order': o, 'dim': d, 'quantity': 'm_star', 'versus': 'rank',
                              **fit}, al))
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
  return out
