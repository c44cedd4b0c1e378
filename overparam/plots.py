"""Figures drawn from result rows (matplotlib, Agg, PNG)."""

import collections
import math
import os
from typing import Dict, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from overparam import analysis, registry, results  # noqa: E402

# Which algorithms a figure treats how comes from their registry flags (registry.AlgorithmSpec):
# `lazy` (a linearization: the lazy-threshold figure, the alpha -> inf reference) and
# `alpha_scaled` (its alpha sweep has its own figure). Rows of a config.axes sweep are grouped per
# axis value: every curve (or panel) is one "arm", an algorithm at one value of each axis.


def _is_lazy(name: str) -> bool:
  return registry.flag(name, 'lazy')


def _axes_suffix(r: Dict) -> str:
  """' (lr = 0.01, beyond_lazy.init_scale = 0.001)' for the config.axes values of a row or entry."""
  vals = [(k, r.get(k)) for k in r.get('axes') or () if r.get(k) is not None]
  return f' ({", ".join(f"{k} = {v:g}" for k, v in vals)})' if vals else ''


def _arm(r: Dict) -> str:
  """The algorithm with its config.axes values: one curve per arm."""
  return r['algorithm'] + _axes_suffix(r)


def rel_error_vs_width(rows: Sequence[Dict], eps: float, path: str, algorithm: str):
  """Median rel_error across seeds versus width, one line per d (and config.axes value), band =
  min..max; diverged skipped."""
  by_dim = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    if r['algorithm'] == algorithm and r['rel_error'] is not None:
      by_dim[(r['dim'], _axes_suffix(r))][r['width']].append(r['rel_error'])
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for dim in sorted(by_dim):
    ws = sorted(by_dim[dim])
    errs = [np.asarray(by_dim[dim][w]) for w in ws]
    line, = ax.plot(ws, [np.median(e) for e in errs], marker='o', label=f'd = {dim[0]}{dim[1]}')
    ax.fill_between(ws, [e.min() for e in errs], [e.max() for e in errs], color=line.get_color(), alpha=0.2)
  ax.axhline(eps, color='k', ls='--', lw=1, label=f'eps = {eps:g}')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('width m')
  ax.set_ylabel('relative error  ||T - T*|| / ||T*||')
  order = next((r['order'] for r in rows if r['algorithm'] == algorithm), '?')
  ax.set_title(f'{algorithm}, order {order}: median and range over seeds')
  ax.legend(fontsize=8)
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def _dimension_count(d, order):
  """C(d+l-1, l) / d = (d+1)...(d+l-1) / l!, smooth in d."""
  d = np.asarray(d, np.float64)
  return np.prod([d + k for k in range(1, order)], axis=0) / math.factorial(order)


def _fit_label(fits, **match):
  for f in fits:
    if all(f.get(k) == v for k, v in match.items()):
      return f', exponent {f["exponent"]:.2f}'
  return ''


def lazy_threshold(rows: Sequence[Dict], eps: float, path: str, order: int):
  """Log-log m*(d) of the lazy algorithms, the tangent-rank threshold and the dimension count."""
  ths = [t for t in analysis.thresholds(rows, eps) if t['order'] == order and _is_lazy(t['algorithm'])]
  rank_ths = [t for t in analysis.tangent_rank_thresholds(rows) if t['order'] == order]
  fits = analysis.exponents(ths) + analysis.exponents(rank_ths, 'rank_m_star')
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  markers = [('o', 9), ('x', 7), ('+', 8), ('D', 5), ('v', 6)]
  arms = sorted({_arm(t) for t in ths})
  for i, arm in enumerate(arms):
    mine = [t for t in ths if _arm(t) == arm]
    pts = sorted((t['dim'], t['m_star']) for t in mine if t['m_star'] is not None)
    if pts:
      mk, size = markers[i % len(markers)]
      match = {k: mine[0].get(k) for k in ['algorithm'] + list(mine[0].get('axes') or ())}
      ax.plot(*zip(*pts), ls='none', marker=mk, ms=size, mfc='none', label=f'{arm} m*{_fit_label(fits, quantity="m_star", **match)}')
  pts = sorted((t['dim'], t['rank_m_star']) for t in rank_ths if t['rank_m_star'] is not None)
  if pts:
    ax.plot(*zip(*pts), ls='none', marker='s', ms=4, color='k',
            label=f'tangent rank = C(d+l-1,l){_fit_label(fits, quantity="rank_m_star")}')
  dims = sorted({t['dim'] for t in ths} | {t['dim'] for t in rank_ths})
  if dims:
    grid = np.geomspace(min(dims), max(dims), 100)
    count = analysis.fit_power_law(dims, _dimension_count(dims, order))
    ax.plot(grid, _dimension_count(grid, order), color='gray', lw=1,
            label='dimension count C(d+l-1,l)/d' + (f', exponent {count["exponent"]:.2f}' if count else ''))
    ax.plot(grid, grid ** (order - 1) / math.factorial(order), color='gray', lw=1, ls=':',
            label=f'its asymptote d^{order - 1}/{order}!')
  ax.set_xscale('log')
  ax.set_yscale('log')
  _plain_log_axes(ax)
  ax.set_xticks(dims)
  ax.set_xlabel('dimension d')
  ax.set_ylabel(f'smallest width m* (rel_error < {eps:g})')
  ax.set_title(f'lazy regime, order {order}: m* versus d (d^{order - 1} asymptotically)')
  ax.legend(fontsize=7)
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def alpha_scaling(rows: Sequence[Dict], eps: float, path: str):
  """rel_error, movement and linearization gap of the alpha-scaled algorithms (gd) versus alpha
  (median over seeds, band = min..max, diverged runs left out and marked), one line per (arm, d,
  width); the lazy algorithms' values as the alpha -> inf reference."""
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  ref = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    if r['status'] == 'diverged':  # its movement and gap are not numbers worth plotting either
      continue
    if registry.flag(r['algorithm'], 'alpha_scaled') and r.get('alpha') is not None:
      groups[(r['dim'], r['width'], _arm(r))][r['alpha']].append(r)
    elif _is_lazy(r['algorithm']):
      ref[(r['dim'], r['width'])][_arm(r)].append(r)
  keys = ('rel_error', 'movement', 'linearization_gap')
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  for (dim, width, arm), by_alpha in sorted(groups.items()):
    alphas = sorted(by_alpha)
    for ax, key in zip(axes, keys):
      vals = [[r[key] for r in by_alpha[a] if r.get(key) is not None] for a in alphas]
      pts = [(a, np.median(v), min(v), max(v)) for a, v in zip(alphas, vals) if v]
      if not pts:
        continue
      a, med, lo, hi = map(np.asarray, zip(*pts))
      line, = ax.plot(a, med, marker='o', label=f'{arm}, d = {dim}, m = {width}')
      ax.fill_between(a, lo, hi, color=line.get_color(), alpha=0.2)
      for alg, ls in zip(sorted(ref[(dim, width)]), ('--', ':', '-.', (0, (1, 3)))):
        lazy_rows = ref[(dim, width)].get(alg, [])
        v = [r[key] for r in lazy_rows if r.get(key) is not None]
        if not v or key == 'linearization_gap':
          continue
        if key == 'movement':  # the alpha model moves W - W0 = (lazy step) / alpha
          ax.plot(a, np.median(v) / a, ls=ls, color=line.get_color(), lw=1, label=f'{alg} movement / alpha')
        else:
          ax.axhline(np.median(v), ls=ls, color=line.get_color(), lw=1, label=f'{alg} (alpha -> inf)')
  diverged = sorted({r['alpha'] for r in rows if registry.flag(r['algorithm'], 'alpha_scaled')
                     and r.get('alpha') is not None and r['rel_error'] is None})
  if diverged:  # no number to plot: mark where they are
    axes[0].plot(diverged, [1.0] * len(diverged), ls='none', marker='x', color='r', label='diverged (some seeds)')
  axes[0].axhline(eps, color='k', lw=0.8, label=f'eps = {eps:g}')
  for ax, key in zip(axes, ('relative error', 'movement ||W - W0|| / ||W0||', 'linearization gap / ||T*||')):
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('alpha')
    ax.set_ylabel(key)
  axes[0].legend(fontsize=7)
  axes[1].legend(fontsize=7)
  fig.suptitle('alpha-scaling (Chizat et al.): training alpha (T(W) - T(W0)), loss / alpha^2')
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def _series_label(arm, alpha, extra='', rows=()):
  """`arm[ (alpha = a)]extra`; alpha shown only when the rows hold several alphas of the arm."""
  swept = len({r.get('alpha') for r in rows if _arm(r) == arm}) > 1
  return arm + (f' (alpha = {alpha:g})' if swept and alpha is not None else '') + extra


def _match(t: Dict) -> Dict:
  """Fields that identify a series of analysis entries: algorithm, alpha, config.axes values."""
  out = {'algorithm': t['algorithm']}
  if t.get('alpha') is not None:
    out['alpha'] = t['alpha']
  out.update({k: t.get(k) for k in t.get('axes') or ()})
  return out


def _plain_log_axes(ax):
  """Log axes labelled 1, 2, 10, 100 rather than 10^0, 2 x 10^0."""
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def m_star_vs_dim(rows: Sequence[Dict], eps: float, path: str):
  """Log-log m*(d) of every algorithm, one series per (algorithm, order, rank[, alpha]), with the
  fitted power-law exponent in the legend; open triangles at the largest width mark d where no
  width reached eps (m* > max width)."""
  ths = analysis.thresholds(rows, eps)
  fits = analysis.exponents(ths)
  boot = analysis.bootstrap_exponents(rows, eps)
  spread = {(t['algorithm'], t['order'], t['dim'], t['rank'], analysis.extra_of(t)):
            [m for m in t['seed_m_star'].values() if m is not None] for t in analysis.seed_thresholds(rows, eps)}
  top = max(r['width'] for r in rows)
  series = collections.defaultdict(list)
  for t in ths:
    series[(t['algorithm'], t['order'], t['rank'], analysis.extra_of(t))].append(t)
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  drawn = [kv for kv in sorted(series.items(), key=lambda kv: str(kv[0])) if len({t['dim'] for t in kv[1]}) >= 2]
  for i, ((alg, order, rank, extra), ts) in enumerate(drawn):
    shift = 1.0 + 0.025 * (i - (len(drawn) - 1) / 2)  # side by side, so the error bars do not overlap
    pts = sorted((t['dim'], t['m_star']) for t in ts if t['m_star'] is not None)
    match = dict(order=order, rank=rank, **_match(ts[0]))
    fit = _fit_label(fits, quantity='m_star', **match)
    b = next((e for e in boot if all(e.get(k) == v for k, v in match.items())), None)
    if fit and b is not None:
      fit += f' [{b["interval"][0]:.2f}, {b["interval"][1]:.2f}]'
    label = _series_label(_arm(ts[0]), extra[0], f', l = {order}, r = {rank}{fit}', rows)
    if pts:
      dims, ms = map(np.asarray, zip(*pts))
      per_seed = [spread.get((alg, order, d, rank, extra)) or [m] for d, m in pts]
      err = np.array([[max(m - min(p), 0) for m, p in zip(ms, per_seed)],
                      [max(max(p) - m, 0) for m, p in zip(ms, per_seed)]])
      line = ax.errorbar(dims * shift, ms, yerr=err, marker='o', ms=5, capsize=3, label=label).lines[0]
    else:
      line, = ax.plot([], [], label=label)
    miss = sorted(t['dim'] for t in ts if t['m_star'] is None)
    if miss:
      ax.plot(miss, [top] * len(miss), ls='none', marker='^', mfc='none', color=line.get_color())
  for order in sorted({t['order'] for t in ths}):  # what the lazy regime needs, for scale
    dims = sorted({t['dim'] for t in ths if t['order'] == order})
    if len(dims) > 1:
      grid = np.geomspace(min(dims), max(dims), 100)
      ax.plot(grid, _dimension_count(grid, order), color='gray', lw=1, ls='--',
              label=f'lazy regime: dimension count C(d+l-1,l)/d, l = {order}')
  ranks = {t['rank'] for t in ths}
  if len(ranks) == 1:  # no width below r can fit a rank-r target
    ax.axhline(min(ranks), color='gray', lw=0.8, ls=':', label=f'm = r = {min(ranks)}')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('dimension d')
  ax.set_ylabel(f'm* (half the seeds reach rel_error < {eps:g})')
  _plain_log_axes(ax)
  all_dims = sorted({t['dim'] for t in ths})
  if len(all_dims) <= 10:
    ax.set_xticks(all_dims)
  ax.set_ylim(bottom=min([t['m_star'] for t in ths if t['m_star']] + list(ranks)) * 0.8)
  ax.set_title('smallest width m* versus d\n(bars: per-seed thresholds min..max; [ ]: 90% bootstrap over seeds)',
               fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def m_star_vs_rank(rows: Sequence[Dict], eps: float, path: str):
  """Log-log m*(r), one series per (algorithm, order, d[, alpha]), fitted exponent in the legend;
  the line m = r (the fewest components that can fit a rank-r target) for reference."""
  ths = analysis.thresholds(rows, eps)
  fits = analysis.rank_exponents(ths)
  series = collections.defaultdict(list)
  for t in ths:
    series[(t['algorithm'], t['order'], t['dim'], analysis.extra_of(t))].append(t)
  fig, ax = plt.subplots(figsize=(5.8, 4.2))
  ranks = sorted({t['rank'] for t in ths})
  for (alg, order, dim, extra), ts in sorted(series.items(), key=lambda kv: str(kv[0])):
    pts = sorted((t['rank'], t['m_star']) for t in ts if t['m_star'] is not None)
    if len({t['rank'] for t in ts}) < 2 or not pts:
      continue
    fit = _fit_label(fits, order=order, dim=dim, **_match(ts[0]))
    ax.plot(*zip(*pts), marker='o', label=_series_label(_arm(ts[0]), extra[0], f', l = {order}, d = {dim}{fit}', rows))
  ax.plot(ranks, ranks, color='gray', lw=1, ls=':', label='m = r')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('rank r')
  ax.set_ylabel(f'm* (half the seeds reach rel_error < {eps:g})')
  _plain_log_axes(ax)
  ax.set_title('smallest width m* versus the rank of T*')
  ax.legend(fontsize=7)
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def success_vs_overparam(rows: Sequence[Dict], eps: float, path: str):
  """Share of seeds reaching rel_error < eps versus the over-parameterization m / r (the local-minima
  experiment): one panel per arm[, alpha], one line per rank, colored by rank."""
  series = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    series[(_arm(r), r.get('alpha'))][(r['rank'], r['width'] / r['rank'])].append(
        r['rel_error'] is not None and r['rel_error'] < eps)
  ranks = sorted({r['rank'] for r in rows})
  colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(ranks)))
  fig, axes = plt.subplots(1, len(series), figsize=(5.0 * len(series), 4.0), sharey=True, squeeze=False)
  for ax, ((alg, alpha), by_cell) in zip(axes[0], sorted(series.items(), key=lambda kv: str(kv[0]))):
    for rank, color in zip(ranks, colors):
      pts = sorted((q, np.mean(v), len(v)) for (k, q), v in by_cell.items() if k == rank)
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', ms=4, color=color,
                label=f'r = {rank} ({min(p[2] for p in pts)} seeds)')
    ax.axvline(1.0, color='gray', lw=0.8, ls=':')
    ax.set_xscale('log', base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel('over-parameterization m / r')
    ax.set_title(_series_label(alg, alpha, '', rows))
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel(f'success rate (rel_error < {eps:g})')
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def by_dim_panels(rows: Sequence[Dict], path: str, key: str, ylabel: str, eps: Optional[float] = None,
                  title: str = ''):
  """One panel per d, one line per algorithm (median of `key` across seeds versus width, band =
  min..max), one line per arm with config.axes; log-log; alpha-swept algorithms left out
  (alpha_scaling draws them). eps: a dashed line."""
  swept = _alpha_swept(rows)
  data = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
  for r in rows:
    if r['algorithm'] not in swept and r.get(key) is not None:
      data[r['dim']][_arm(r)][r['width']].append(r[key])
  dims = sorted(data)
  algs = sorted({a for d in dims for a in data[d]})
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  colors = {a: cycle[i % len(cycle)] for i, a in enumerate(algs)}
  ncol = min(len(dims), 4)
  nrow = max(1, math.ceil(len(dims) / ncol))
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), sharey=True, squeeze=False)
  for ax, dim in zip(axes.flat, dims):
    for alg in algs:
      ws = sorted(data[dim][alg])
      if not ws:
        continue
      vals = [np.asarray(data[dim][alg][w]) for w in ws]
      ax.plot(ws, [np.median(v) for v in vals], marker='o', ms=3, color=colors[alg], label=alg)
      ax.fill_between(ws, [v.min() for v in vals], [v.max() for v in vals], color=colors[alg], alpha=0.2)
    if eps is not None:
      ax.axhline(eps, color='k', ls='--', lw=0.8, label=f'eps = {eps:g}')
      ax.set_ylim(bottom=eps * 1e-3)  # an exact fit (lazy_exact: ~1e-15) would squash the rest
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(f'd = {dim}', fontsize=10)
    ax.set_xlabel('width m')
  for ax in axes[:, 0]:
    ax.set_ylabel(ylabel)
  for ax in list(axes.flat)[len(dims):]:
    ax.set_visible(False)
  axes.flat[0].legend(fontsize=7)
  order = sorted({r['order'] for r in rows})
  clip = f'; axis cut at {eps * 1e-3:g}' if eps is not None else ''
  fig.suptitle(f'{title}order {", ".join(map(str, order))}: median over seeds, band = min..max{clip}', fontsize=10)
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=100)  # [reliab] temp + fsync + rename
  plt.close(fig)


def _alignment_trajectories(rows: Sequence[Dict], workdir: str):
  """(row, trajectory dict) for rows whose trajectory records per-component alignment."""
  out = []
  for r in rows:
    f = r.get('trajectory_file')
    if not f or not os.path.exists(os.path.join(workdir, f)):
      continue
    with np.load(os.path.join(workdir, f)) as z:
      if 'aligned_weight' in z.files and 'target_weight' in z.files:
        out.append((r, {k: z[k] for k in z.files}))
  return sorted(out, key=lambda rt: (rt[0]['algorithm'], rt[0]['dim'], rt[0]['width'], rt[0]['seed']))


def deflation(rows: Sequence[Dict], workdir: str, eps: float, path: str, max_runs: int = 4):
  """The deflation picture from saved trajectories: (left) rel_error versus iteration of a few runs
  (a staircase: one step per fitted component); (middle) weight aligned with each a_j over c*_j for
  the first run, with the iteration at which it reaches 1/2 (analysis.fit_steps); (right) that
  iteration versus c*_j over every run: the largest components are fitted first."""
  trajs = _alignment_trajectories(rows, workdir)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for r, z in trajs[:max_runs]:
    axes[0].plot(z['iteration'], z['rel_error'], label=f"{r['algorithm']} d={r['dim']} m={r['width']} seed {r['seed']}")
  axes[0].axhline(eps, color='k', ls='--', lw=0.8, label=f'eps = {eps:g}')
  axes[0].set_yscale('log')
  axes[0].set_xlabel('iteration')
  axes[0].set_ylabel('relative error')
  axes[0].set_title('loss curve')
  axes[0].legend(fontsize=7)
  if trajs:
    r, z = trajs[0]
    cs = np.abs(z['target_weight'][0])
    steps = analysis.fit_steps(z['iteration'], z['aligned_weight'], z['target_weight'][0])
    for j in np.argsort(-cs):
      line, = axes[1].plot(z['iteration'], z['aligned_weight'][:, j] / cs[j], label=f'a_{j + 1}, c* = {cs[j]:g}')
      if steps[j] is not None:
        axes[1].axvline(steps[j], color=line.get_color(), ls=':', lw=1)
    order = ', '.join(f'a_{j + 1}' for j in analysis.fit_order(steps) if steps[j] is not None)
    axes[1].set_title(f"seed {r['seed']}: fitted in the order {order}", fontsize=9)
  axes[1].set_xlabel('iteration')
  axes[1].set_ylabel('aligned weight / c*_j')
  axes[1].legend(fontsize=7)
  for r, z in trajs:
    cs = np.abs(z['target_weight'][0])
    steps = analysis.fit_steps(z['iteration'], z['aligned_weight'], z['target_weight'][0])
    pts = [(cs[j], s) for j, s in enumerate(steps) if s is not None]
    if pts:
      axes[2].plot(*zip(*sorted(pts)), marker='o', alpha=0.6, lw=0.8)
  axes[2].set_xscale('log')
  axes[2].set_yscale('log')
  _plain_log_axes(axes[2])
  axes[2].set_xlabel('c*_j')
  axes[2].set_ylabel('iteration at which a_j is half fitted')
  axes[2].set_title(f'every run ({len(trajs)}): larger components first')
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def _alpha_swept(rows) -> set:
  """Alpha-scaled algorithms with several alphas in the rows (the alpha_scaling figure draws them)."""
  algs = {r['algorithm'] for r in rows if registry.flag(r['algorithm'], 'alpha_scaled')}
  return {a for a in algs if len({r.get('alpha') for r in rows if r['algorithm'] == a}) > 1}


def draw_all(rows: Sequence[Dict], eps: float, figures_dir: str, workdir: Optional[str] = None):
  """Every figure the rows support, into figures_dir; returns the paths written.

  workdir: where the rows' trajectory files are (the deflation figure needs them)."""
  os.makedirs(figures_dir, exist_ok=True)
  paths = []
  algs = {r['algorithm'] for r in rows}
  swept = _alpha_swept(rows)
  lazy_algs = {a for a in algs if _is_lazy(a)}
  for alg in sorted(algs - swept):  # an alpha sweep has its own figure
    p = os.path.join(figures_dir, f'rel_error_vs_width_{alg}.png')
    rel_error_vs_width(rows, eps, p, alg)
    paths.append(p)
  for order in sorted({r['order'] for r in rows if r['algorithm'] in lazy_algs}):
    if len({r['dim'] for r in rows if r['order'] == order and r['algorithm'] in lazy_algs}) > 1:
      p = os.path.join(figures_dir, f'lazy_threshold_l{order}.png')
      lazy_threshold(rows, eps, p, order)
      paths.append(p)
  if len({_arm(r) for r in rows if r['algorithm'] not in swept}) >= 2:  # several arms on the same targets
    for name, key, label, e in (('rel_error_vs_width', 'rel_error', 'relative error', eps),
                                ('movement_vs_width', 'movement', 'movement ||W - W0|| / ||W0||', None)):
      p = os.path.join(figures_dir, f'{name}.png')
      by_dim_panels(rows, p, key, label, eps=e, title=f'{label} versus width, ')
      paths.append(p)
  if swept:
    p = os.path.join(figures_dir, 'alpha_scaling.png')
    alpha_scaling(rows, eps, p)
    paths.append(p)
  if any(len({r['dim'] for r in rows if r['algorithm'] == a}) > 1 for a in algs - lazy_algs):
    p = os.path.join(figures_dir, 'm_star_vs_dim.png')
    m_star_vs_dim(rows, eps, p)
    paths.append(p)
  if len({r['rank'] for r in rows}) > 1:
    for name, fn in (('m_star_vs_rank', m_star_vs_rank), ('success_vs_overparam', success_vs_overparam)):
      p = os.path.join(figures_dir, f'{name}.png')
      fn(rows, eps, p)
      paths.append(p)
  if workdir is not None and _alignment_trajectories(rows, workdir):
    p = os.path.join(figures_dir, 'deflation.png')
    deflation(rows, workdir, eps, p)
    paths.append(p)
  paths += sample_figures(rows, eps, figures_dir)
  return paths


# ---- loss = samples: learning T* from data (rows carry num_samples and train_error) ---------------

def _sample_rows(rows):
  return [r for r in rows if r.get('num_samples') is not None]


def _by_regime(rows):
  """{(algorithm, width): {dim: {n: [rows]}}}, the series of the sample figures."""
  out = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
  for r in rows:
    out[(r['algorithm'], r['width'])][r['dim']][r['num_samples']].append(r)
  return out


def _median_band(vals):
  v = np.asarray(vals, np.float64)
  return np.median(v), v.min(), v.max()


def sample_error_vs_n(rows: Sequence[Dict], eps: float, path: str, key: str = 'rel_error', gap: bool = False):
  """One panel per (algorithm, width): median over seeds of the population rel_error versus n, one
  line per d (band = min..max; diverged runs left out). gap=True adds train_error dashed: the
  train/population gap."""
  series = _by_regime(_sample_rows(rows))
  keys = sorted(series, key=str)
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
  for ax, (alg, width) in zip(axes[0], keys):
    for dim in sorted(series[(alg, width)]):
      by_n = series[(alg, width)][dim]
      pts = [(n, *_median_band([r[key] for r in by_n[n] if r.get(key) is not None])) for n in sorted(by_n)
             if any(r.get(key) is not None for r in by_n[n])]
      if not pts:
        continue
      n, med, lo, hi = map(np.asarray, zip(*pts))
      line, = ax.plot(n, np.maximum(med, 1e-16), marker='o', ms=3, label=f'd = {dim} population')
      ax.fill_between(n, np.maximum(lo, 1e-16), np.maximum(hi, 1e-16), color=line.get_color(), alpha=0.15)
      if gap:
        tr = [(m, np.median([r['train_error'] for r in by_n[m] if r.get('train_error') is not None]))
              for m in sorted(by_n) if any(r.get('train_error') is not None for r in by_n[m])]
        if tr:
          ax.plot(*zip(*[(m, max(v, 1e-16)) for m, v in tr]), ls='--', marker='x', ms=3, color=line.get_color(),
                  label=f'd = {dim} train')
    ax.axhline(eps, color='k', lw=0.8, ls=':', label=f'eps = {eps:g}')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('training samples n')
    ax.set_title(f'{alg}, m = {width}', fontsize=9)
    ax.legend(fontsize=6)
  axes[0][0].set_ylabel('relative error (solid: population, exact)' if gap else 'population rel_error (exact)')
  fig.suptitle('train (dashed) and population (solid) error versus n, median over seeds' if gap else
               'population error versus n: median over seeds, band = min..max', fontsize=10)
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def n_star_vs_dim(rows: Sequence[Dict], eps: float, path: str):
  """Log-log n*(d) per (algorithm, width) with the fitted exponent, the per-seed spread as error bars,
  and the dimension C(d+l-1, l) of degree-l polynomials <T, H_l(x)> (what a kernel needs) for scale."""
  ths = analysis.sample_thresholds(rows, eps)
  fits = analysis.sample_exponents(ths)
  series = collections.defaultdict(list)
  for t in ths:
    series[(t['algorithm'], t['order'], t['rank'], t['width'])].append(t)
  fig, ax = plt.subplots(figsize=(6.2, 4.5))
  top = max(r['num_samples'] for r in _sample_rows(rows))
  for (alg, order, rank, width), ts in sorted(series.items(), key=lambda kv: str(kv[0])):
    pts = sorted((t['dim'], t['n_star'], [v for v in t['seed_n_star'].values() if v is not None]) for t in ts
                 if t['n_star'] is not None)
    fit = _fit_label(fits, algorithm=alg, order=order, rank=rank, width=width)
    label = f'{alg}, m = {width}, r = {rank}{fit}'
    if pts:
      dims, ns, per = zip(*pts)
      err = np.array([[max(n - min(p or [n]), 0) for n, p in zip(ns, per)],
                      [max(max(p or [n]) - n, 0) for n, p in zip(ns, per)]])
      line = ax.errorbar(dims, ns, yerr=err, marker='o', ms=5, capsize=3, label=label).lines[0]
    else:
      line, = ax.plot([], [], label=label)
    miss = sorted(t['dim'] for t in ts if t['n_star'] is None)
    if miss:  # n* above the largest n of the grid
      ax.plot(miss, [top] * len(miss), ls='none', marker='^', mfc='none', color=line.get_color())
  dims = sorted({t['dim'] for t in ths})
  for order in sorted({t['order'] for t in ths}):
    if len(dims) > 1:
      grid = np.geomspace(min(dims), max(dims), 100)
      ax.plot(grid, np.prod([grid + k for k in range(order)], axis=0) / math.factorial(order), color='gray', lw=1,
              ls='--', label=f'C(d+{order - 1},{order}): dimension of degree-{order} <T, H(x)>')
  ax.set_xscale('log')
  ax.set_yscale('log')
  _plain_log_axes(ax)
  if len(dims) <= 10:
    ax.set_xticks(dims)
  ax.set_xlabel('dimension d')
  ax.set_ylabel(f'n* (half the seeds reach population rel_error < {eps:g})')
  ax.set_title('samples needed versus d (bars: per-seed n* min..max; triangles: n* > grid)', fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  results.save_figure_atomic(fig, path, dpi=120)  # [reliab] temp + fsync + rename
  plt.close(fig)


def sample_figures(rows: Sequence[Dict], eps: float, figures_dir: str):
  """The loss = samples figures, when the rows hold several n: population error versus n, the
  train/population gap, and (several d) n* versus d. Returns the paths written."""
  srows = _sample_rows(rows)
  if len({r['num_samples'] for r in srows}) < 2:
    return []
  paths = []
  for name, kw in (('sample_error_vs_n', {}), ('sample_gap_vs_n', {'gap': True})):
    p = os.path.join(figures_dir, f'{name}.png')
    sample_error_vs_n(srows, eps, p, **kw)
    paths.append(p)
  if len({r['dim'] for r in srows}) > 1:
    p = os.path.join(figures_dir, 'n_star_vs_dim.png')
    n_star_vs_dim(srows, eps, p)
    paths.append(p)
  return paths
