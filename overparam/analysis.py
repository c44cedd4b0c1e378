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


def thresholds(rows: Sequence[Dict], eps: float) -> List[Dict]:
  """m* per (algorithm, order, dim, rank)."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r['algorithm'], r['order'], r['dim'], r['rank'])].append(r)
  return [{'algorithm': a, 'order': o, 'dim': d, 'rank': k, 'm_star': m_star(g, eps)}
          for (a, o, d, k), g in sorted(groups.items())]


def exponents(ths: Sequence[Dict]) -> List[Dict]:
  """Power-law fit of m* against d per (algorithm, order, rank), over the d where m* exists."""
  groups = collections.defaultdict(list)
  for t in ths:
    if t['m_star'] is not None:
      groups[(t['algorithm'], t['order'], t['rank'])].append((t['dim'], t['m_star']))
  out = []
  for (a, o, k), pts in sorted(groups.items()):
    fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if fit is not None:
      out.append({'algorithm': a, 'order': o, 'rank': k, 'versus': 'dim', **fit})
  return out


def summarize(rows: Sequence[Dict], eps: float) -> Dict:
  ths = thresholds(rows, eps)
  status = collections.Counter(r['status'] for r in rows)
  return {'eps': eps, 'thresholds': ths, 'exponents': exponents(ths), 'runs': len(rows),
          'status_counts': dict(sorted(status.items()))}
