"""The end of a run as a reader wants it: a compact table (algorithm x d: m*, the fitted exponent with
its uncertainty), the statuses, a line for every arm whose runs all diverged saying what to change,
the paths of summary.json and of every figure, and the wall time."""

import collections
import os
from typing import Dict, List, Optional, Sequence

# What to change when every run of an arm diverged (the algorithm's registry flags decide the advice).
DIVERGED_HINT = {
    False: 'lower its step size (it steps on the raw loss 1/2 ||T - T*||^2, whose curvature grows with '
           '||T*||: scale lr like 1/||T*||), or use beyond_lazy, which trains on T*/||T*||',
    True: 'its step size is in normalized units (T*/||T*||): lower it (config.beyond_lazy.lr)',
}


def _m_star_cell(m, widths) -> str:
  if m is not None:
    return str(m)
  return f'>{max(widths)}' if widths else '-'


def _exponent(summary: Dict, algorithm: str, extra: tuple) -> str:
  fits = [e for e in summary.get('exponents', []) if e.get('algorithm') == algorithm
          and e.get('quantity') == 'm_star' and e.get('versus') == 'dim' and _extra(e) == extra]
  if not fits:
    return '-'
  f = fits[0]
  value = 0.0 if abs(f['exponent']) < 5e-3 else f['exponent']
  if f.get('stderr') is None:
    return f'{value:.2f} ({f["points"]} points)'
  return f'{value:.2f} +- {f["stderr"]:.2f}'


def _extra(entry: Dict) -> tuple:
  """The cell-axis values of an entry (alpha when several, config.axes values)."""
  return tuple((k, entry.get(k)) for k in (entry.get('axes') or ()))


def m_star_table(summary: Dict, rows: Sequence[Dict]) -> List[str]:
  """Lines of the table: one row per (algorithm, order, rank, axis values), one column per d."""
  ths = summary.get('thresholds', [])
  if not ths:
    return []
  dims = sorted({t['dim'] for t in ths})
  widths = collections.defaultdict(set)
  for r in rows:
    widths[(r['algorithm'], r['dim'])].add(r['width'])
  arms = collections.OrderedDict()
  for t in ths:
    arms.setdefault((t['algorithm'], t['order'], t['rank'], t.get('alpha'), _extra(t)), {})[t['dim']] = t['m_star']
  alphas = len({k[3] for k in arms if k[3] is not None}) > 1
  ranks = len({k[2] for k in arms}) > 1
  label = lambda k: (k[0] + (f' r={k[2]}' if ranks else '') + (f' alpha={k[3]:g}' if alphas and k[3] is not None else '')
                     + ''.join(f' {f}={v:g}' for f, v in k[4] if v is not None))
  names = [label(k) for k in arms]
  w = max(len('algorithm'), *(len(n) for n in names))
  cols = [max(len(f'd={d}'), 4) for d in dims]
  out = ['  ' + 'algorithm'.ljust(w) + ''.join(f'  {f"d={d}":>{c}}' for d, c in zip(dims, cols)) + '  exponent (m* ~ d^a)']
  for k, name in zip(arms, names):
    cells = [_m_star_cell(arms[k].get(d), widths.get((k[0], d))) if d in arms[k] else '' for d in dims]
    out.append('  ' + name.ljust(w) + ''.join(f'  {x:>{c}}' for x, c in zip(cells, cols))
               + f'  {_exponent(summary, k[0], k[4])}')
  return out


def diverged_lines(rows: Sequence[Dict], scale_free: Dict[str, bool]) -> List[str]:
  """One line per algorithm whose runs all diverged."""
  by_alg = collections.defaultdict(list)
  for r in rows:
    by_alg[r['algorithm']].append(r['status'])
  out = []
  for alg, statuses in sorted(by_alg.items()):
    if statuses and all(s == 'diverged' for s in statuses):
      out.append(f'{alg}: all {len(statuses)} runs diverged: {DIVERGED_HINT[bool(scale_free.get(alg))]}')
  return out


def end_of_run(workdir: str, summary: Dict, rows: Sequence[Dict], wall_s: Optional[float] = None,
               scale_free: Optional[Dict[str, bool]] = None) -> str:
  """The text printed at the end of a launch (or of overparam.run)."""
  eps = summary.get('eps')
  lines = [f'overparam: {len(rows)} runs' + (f' in {wall_s:.1f} s' if wall_s is not None else '') + f', workdir {workdir}']
  table = m_star_table(summary, rows)
  if table:
    lines.append(f'm* (the smallest width at which at least half the seeds reach rel_error < {eps:g}; '
                 '>M: none up to the largest width M):')
    lines += table
  counts = summary.get('status_counts', {})
  if counts:
    lines.append('statuses: ' + ', '.join(f'{k} {v}' for k, v in sorted(counts.items())))
  lines += diverged_lines(rows, scale_free or {})
  if rows and all(r.get('rank') is None for r in rows):
    lines.append('target: a dense file of unknown rank: rows carry rank null; the recovery metrics and m* versus r '
                 'are skipped (give the rank with --config.target.rank=R)')
  lines.append(f'summary: {os.path.join(workdir, "summary.json")}')
  fig_dir = os.path.join(workdir, 'figures')
  figs = sorted(f for f in os.listdir(fig_dir) if f.endswith('.png')) if os.path.isdir(fig_dir) else []
  if figs:
    lines.append(f'figures ({fig_dir}): ' + ', '.join(figs))
  return '\n'.join(lines)
