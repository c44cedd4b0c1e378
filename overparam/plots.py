"""Figures drawn from result rows (matplotlib Figure objects, no pyplot: PNG, thread-safe).

Each figure is meant to be read on its own: axis labels say what is measured, the legend says what
every line, band and bar is (fitted exponents with their uncertainty, from analysis.py), ticks sit at
the data (every d; the smallest m* has a labelled tick), titles say how a threshold is defined, and
the layout is constrained so that nothing is clipped. Every PNG is written by `_save`.

Conventions shared by the figures:
  m* (n*)   the smallest width (sample size) at which at least half of the seeds reach
            rel_error < eps (analysis.smallest_passing);
  eps       a run stops as soon as its error is below eps, so a curve that flattens just below the
            eps line is a success, not a plateau: the region below eps is shaded, and the
            rel_error-versus-width figures show the fraction of seeds below eps per width;
  bands     min..max over seeds around the median (line);
  bars      (m*, n* figures) min..max of the per-seed thresholds (each seed's own smallest success).
"""

import collections
import math
import os
from typing import Dict, List, Optional, Sequence

import matplotlib

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
import matplotlib.figure  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.transforms  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402

from overparam import algorithms, analysis, registry, results  # noqa: E402,F401 - importing algorithms registers the built-ins

# Which algorithms a figure treats how comes from their registry flags (registry.AlgorithmSpec):
# `lazy` (a linearization: the lazy-threshold figure, the alpha -> inf reference) and
# `alpha_scaled` (its alpha sweep has its own figure). Rows of a config.axes sweep are grouped per
# axis value: every curve (or panel) is one "arm", an algorithm at one value of each axis.

DPI = 100
SUCCESS_COLOR = 'tab:green'
MARKERS = ('o', 's', 'D', '^', 'v', 'P', 'X', '<', '>')


def _save(fig, path: str, dpi: int = DPI):
  """The one place a figure is written to disk: whole or not at all (temp + fsync + rename, never
  through a link; results.save_figure_atomic)."""
  results.save_figure_atomic(fig, path, dpi=dpi)


def _figure(*args, figsize=None, **kwargs):
  """(figure, axes) like plt.subplots, with constrained layout (titles, labels and outside legends are
  never clipped), but a plain matplotlib Figure: no pyplot, so no global state, and figures can be
  drawn from several threads at once."""
  fig = matplotlib.figure.Figure(figsize=figsize, layout='constrained')
  FigureCanvasAgg(fig)  # attaches the Agg canvas (renderer for layout measurements, PNG output)
  return fig, fig.subplots(*args, **kwargs)


def _is_lazy(name: str) -> bool:
  return registry.flag(name, 'lazy')


def _axes_suffix(r: Dict) -> str:
  """' (lr = 0.01, beyond_lazy.init_scale = 0.001)' for the config.axes values of a row or entry."""
  vals = [(k, r.get(k)) for k in r.get('axes') or () if r.get(k) is not None]
  return f' ({", ".join(f"{k} = {v:g}" for k, v in vals)})' if vals else ''


def _arm(r: Dict) -> str:
  """The algorithm with its config.axes values: one curve per arm."""
  return r['algorithm'] + _axes_suffix(r)


# ---- text -------------------------------------------------------------------------------------------

def _num(v: float, nd: int = 2) -> str:
  """A number with nd decimals, never '-0.00'."""
  s = f'{v:.{nd}f}'
  return s.lstrip('-') if float(s) == 0 else s


def _find(entries, **match) -> Optional[Dict]:
  """The first analysis entry whose fields equal `match`."""
  return next((e for e in entries if all(e.get(k) == v for k, v in match.items())), None)


def _exponent_text(fit: Optional[Dict], boot: Optional[Dict] = None) -> str:
  """'exponent 1.74 ± 0.05, 90% bootstrap [1.74, 1.82]' from an analysis.fit_power_law entry (its
  stderr) and an analysis.bootstrap_exponents entry (its interval); 'flat' where both are zero."""
  if fit is None:
    return 'no fit (m* at fewer than 2 points)'
  e, se = fit['exponent'], fit.get('stderr')
  s = f'exponent {_num(e)}'
  s += f' ± {_num(se)}' if se is not None else f' ({fit.get("points", 2)} points: no stderr)'
  if float(_num(e)) == 0 and (se is None or float(_num(se)) == 0):
    s += ' (flat)'
  if boot is not None:
    lo, hi = boot['interval']
    s += f', {round(100 * boot.get("level", 0.9))}% bootstrap [{_num(lo)}, {_num(hi)}]'
  return s


def _binom_label(order: int, over_d: bool = True) -> str:
  """'C(d+2,3)/d' for order 3: the dimension count of the lazy regime (C(d+l-1, l) / d)."""
  return f'C(d+{order - 1},{order})' + ('/d' if over_d else '')


def _frac(v: float) -> str:
  """0.0625 -> '1/16', 1 -> '1', 0.3 -> '0.3'."""
  if 0 < v < 1 and abs(1 / v - round(1 / v)) < 1e-9:
    return f'1/{round(1 / v)}'
  return f'{v:g}'


# ---- axes -------------------------------------------------------------------------------------------

def _plain(v, _=None) -> str:
  return f'{v:g}'


def _log_ticks(axis, lo: float, hi: float, data: Sequence[float] = (), smallest: Optional[float] = None,
               subs=(1.0, 2.0, 5.0)):
  """Labelled major ticks on a log axis over [lo, hi]: subs x 10^k, every integer of `data` (the
  thresholds drawn) below 10 (where 3 and 4 must be told apart), and, when no tick lies at or below
  `smallest` (default: min(data)), a round tick just below it. A grid tick within 12% of a data tick
  is dropped."""
  data = sorted({float(v) for v in data if v is not None and v > 0})
  grid = [s * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
          for s in subs]
  grid = [g for g in grid if lo <= g <= hi]
  mine = [v for v in data if v < 10 and v == round(v)]
  low = smallest if smallest is not None else (data[0] if data else None)
  if low is not None and not any(t <= low * (1 + 1e-9) for t in grid + mine):
    k = math.floor(math.log10(low))
    nice = [s * 10.0 ** k for s in range(1, 10) if lo <= s * 10.0 ** k <= low * (1 + 1e-9)]
    mine.append(nice[-1] if nice else float(f'{low:.2g}'))
  grid = [g for g in grid if all(abs(math.log(g / v)) > math.log(1.12) for v in mine)]
  axis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(set(grid + mine))))
  axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))
  axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _plain_log_axes(ax):
  """Log axes labelled 1, 2, 10, 100 rather than 10^0, 2 x 10^0."""
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _data_ticks(axis, values: Sequence[float], max_ticks: int = 12):
  """A log axis labelled at every data value (every d, every r, every m/r); beyond max_ticks values,
  1-2-5 ticks plus the smallest and largest value."""
  vals = sorted({float(v) for v in values})
  if not vals:
    return
  if len(vals) <= max_ticks:
    axis.set_major_locator(matplotlib.ticker.FixedLocator(vals))
  else:
    _log_ticks(axis, vals[0], vals[-1], [vals[0], vals[-1]])
    return
  axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))
  axis.set_minor_locator(matplotlib.ticker.NullLocator())
  axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _span(values: Sequence[float], below: float = 0.8, above: float = 1.25):
  """(lo, hi) of a log axis holding every positive value with a margin."""
  v = [float(x) for x in values if x is not None and np.isfinite(x) and x > 0]
  return (min(v) * below, max(v) * above) if v else (1.0, 10.0)


def _decade_ticks(axis, lo: float, hi: float, extra: Sequence[float] = (), floor: Optional[float] = None):
  """Decade ticks (plain numbers) over [lo, hi] plus `extra` (eps); the floor is labelled '≤floor':
  values below it are drawn on it."""
  ks = range(math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9) + 1)
  ticks = [10.0 ** k for k in ks]
  if len(ticks) > 7:  # every other decade
    ticks = ticks[::2]
  keep = list(extra) + ([floor] if floor is not None else [])
  ticks = [t for t in ticks if all(abs(math.log(t / v)) > math.log(1.6) for v in keep)] + keep
  axis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(set(ticks))))

  def fmt(v, _=None):
    s = f'{v:g}'
    return '≤' + s if floor is not None and abs(v - floor) <= 1e-12 * floor else s

  axis.set_major_formatter(matplotlib.ticker.FuncFormatter(fmt))
  axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _rel_error_axis(ax, eps: float, floor: float, top: float, clipped: bool):
  """A log rel_error axis from the floor to `top`, with the eps line and the success region below it;
  clipped: values below the floor were drawn on it (its tick reads '≤floor')."""
  ax.set_yscale('log')
  ax.set_ylim(floor / 1.3, top)
  ax.axhspan(floor / 1.3, eps, color=SUCCESS_COLOR, alpha=0.08, lw=0)
  ax.axhline(eps, color='k', ls='--', lw=0.9)
  _decade_ticks(ax.yaxis, floor, top, extra=[eps], floor=floor if clipped else None)
  if not clipped:  # a labelled tick at the bottom
    ticks = sorted(set(ax.yaxis.get_major_locator().tick_values(floor, top)) | {floor})
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))


def _eps_handles(eps: float, what: str = 'rel_error', stop: str = 'runs stop as soon as they are below it'):
  return [Line2D([], [], color='k', ls='--', lw=0.9, label=f'eps = {eps:g}: success threshold ({stop})'),
          Patch(color=SUCCESS_COLOR, alpha=0.15, label=f'{what} < eps: success')]


def _dimension_count(d, order):
  """C(d+l-1, l) / d = (d+1)...(d+l-1) / l!, smooth in d."""
  d = np.asarray(d, np.float64)
  return np.prod([d + k for k in range(1, order)], axis=0) / math.factorial(order)


def _fit_line(ax, fit: Optional[Dict], xs: Sequence[float], color, **kw):
  """The fitted power law prefactor * x^exponent over the range of xs, as a line."""
  if fit is None or len(xs) < 2:
    return
  grid = np.geomspace(min(xs), max(xs), 50)
  ax.plot(grid, fit['prefactor'] * grid ** fit['exponent'], color=color, lw=kw.pop('lw', 1.2),
          alpha=kw.pop('alpha', 0.85), **kw)


def _legend_below(fig, handles, ncols: int = 1, title: Optional[str] = None, fontsize: float = 8):
  """One legend under the axes, in at most ncols columns: fewer where it would be wider than the figure."""
  if not handles:
    return
  renderer = fig.canvas.get_renderer()
  for n in range(max(1, min(ncols, len(handles))), 0, -1):
    lg = fig.legend(handles=handles, loc='outside lower center', ncols=n, fontsize=fontsize, title=title,
                    title_fontsize=fontsize, frameon=False)
    if n == 1 or lg.get_window_extent(renderer).width <= fig.bbox.width * 0.98:
      return
    lg.remove()


def _seed_count(rows) -> int:
  return len({r.get('seed') for r in rows})


# ---- rel_error and movement versus width -------------------------------------------------------------

def _success_strip(ax, eps: float, series, what: str = 'rel_error'):
  """Fraction of seeds with rel_error < eps per width, one line per series [(label, color, marker,
  {width: [bool]})], with the m* rule (half the seeds) as a line."""
  for _, color, marker, by_w in series:
    ws = sorted(by_w)
    ax.plot(ws, [np.mean(by_w[w]) for w in ws], color=color, marker=marker, ms=3.5, lw=1, alpha=0.85)
  ax.axhline(0.5, color='gray', ls=':', lw=1)
  ax.set_ylim(-0.08, 1.08)
  ax.set_yticks([0, 0.5, 1])
  ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))


def _floor(eps: float, values: Sequence[float]):
  """(floor, clipped) of a rel_error axis: eps/100 when some value lies below it (an exact fit, ~1e-13:
  drawn on the floor, so that the region around eps keeps its room), else the decade at or below the
  smallest value."""
  v = [x for x in values if x is not None and x > 0]
  low = min(v, default=eps)
  if low < eps * 1e-2:
    return eps * 1e-2, True
  return 10.0 ** math.floor(math.log10(min(low, eps)) + 1e-9), False


def _clip_note(floor: float, clipped: bool, sep: str = '; ') -> str:
  return f'{sep}values below {floor:g} (exact fits) are drawn at the bottom edge' if clipped else ''


def _width_axis(ax, widths):
  ax.set_xscale('log')
  lo, hi = min(widths), max(widths)
  ax.set_xlim(lo / 1.15, hi * 1.15)
  if len(set(widths)) <= 8:
    _data_ticks(ax.xaxis, widths)
  else:
    _log_ticks(ax.xaxis, lo / 1.15, hi * 1.15, [lo])


def rel_error_vs_width(rows: Sequence[Dict], eps: float, path: str, algorithm: str):
  """Median rel_error across seeds versus width, one line per d (and config.axes value), band =
  min..max, diverged skipped (top); the fraction of seeds below eps per width (bottom), from which m*
  is read (the first width where it reaches 1/2)."""
  by_dim = collections.defaultdict(lambda: collections.defaultdict(list))
  ok = collections.defaultdict(lambda: collections.defaultdict(list))
  mine = [r for r in rows if r['algorithm'] == algorithm]
  for r in mine:
    key = (r['dim'], _axes_suffix(r))
    ok[key][r['width']].append(r['rel_error'] is not None and r['rel_error'] < eps)
    if r['rel_error'] is not None:
      by_dim[key][r['width']].append(r['rel_error'])
  vals = [v for d in by_dim.values() for vs in d.values() for v in vs]
  floor, clipped = _floor(eps, vals)
  fig, (ax, strip) = _figure(2, 1, figsize=(7.0, 6.6), sharex=True, height_ratios=[3, 1.3])
  handles, strips = [], []
  alpha = 0.18 if len(ok) <= 3 else 0.1
  for i, key in enumerate(sorted(ok)):
    color, marker = f'C{i % 10}', MARKERS[i % len(MARKERS)]
    ws = sorted(by_dim[key])
    if ws:
      errs = [np.maximum(np.asarray(by_dim[key][w]), floor) for w in ws]
      ax.plot(ws, [np.median(e) for e in errs], marker=marker, ms=4, color=color)
      ax.fill_between(ws, [e.min() for e in errs], [e.max() for e in errs], color=color, alpha=alpha, lw=0)
    m = analysis.smallest_passing(ok[key])
    handles.append(Line2D([], [], color=color, marker=marker, ms=4,
                          label=f'd = {key[0]}{key[1]}: m* = {m if m is not None else "> " + str(max(ok[key]))}'))
    strips.append((key, color, marker, ok[key]))
  _rel_error_axis(ax, eps, floor, max(1.3, 1.3 * max(vals, default=1.0)), clipped)
  _success_strip(strip, eps, strips)
  _width_axis(strip, [r['width'] for r in mine] or [1, 2])
  ax.tick_params(labelbottom=False)
  ax.set_ylabel('relative error ||T − T*||_F / ||T*||_F')
  strip.set_ylabel(f'fraction of seeds\nbelow eps')
  strip.set_xlabel('width m (number of components)')
  order = next((r['order'] for r in mine), '?')
  n = _seed_count(mine)
  ax.set_title(f'{algorithm}, order {order}: rel_error versus width\n'
               f'line: median over {n} seeds, band: min..max{_clip_note(floor, clipped, chr(10))}', fontsize=9)
  handles += _eps_handles(eps)
  handles.append(Line2D([], [], color='gray', ls=':', label='1/2 of the seeds: m* = first width at or above it'))
  _legend_below(fig, handles, ncols=2, fontsize=7.5)
  _save(fig, path)
  return fig


def by_dim_panels(rows: Sequence[Dict], path: str, key: str, ylabel: str, eps: Optional[float] = None,
                  title: str = ''):
  """One panel per d, one line per arm (median of `key` across seeds versus width, band = min..max),
  log-log; alpha-swept algorithms left out (alpha_scaling draws them). eps (the rel_error figure): the
  success region below eps shaded, values below eps/100 drawn at the bottom edge, and under each
  panel the fraction of seeds below eps per width. Without eps (movement): the lazy dimension count
  C(d+l-1,l)/d as a dotted line where a lazy arm is drawn."""
  swept = _alpha_swept(rows)
  data = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
  okd = collections.defaultdict(lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
  kept = [r for r in rows if r['algorithm'] not in swept]
  for r in kept:
    if r.get(key) is not None:
      data[r['dim']][_arm(r)][r['width']].append(r[key])
    if eps is not None:
      okd[r['dim']][_arm(r)][r['width']].append(r['rel_error'] is not None and r['rel_error'] < eps)
  dims = sorted(set(data) | set(okd))
  algs = sorted({a for d in dims for a in list(data[d]) + list(okd[d])})
  style = {a: (f'C{i % 10}', MARKERS[i % len(MARKERS)]) for i, a in enumerate(algs)}
  ncol = max(1, min(len(dims), 3))
  nrow = max(1, math.ceil(len(dims) / ncol))
  if eps is not None:
    fig, axes = _figure(2 * nrow, ncol, figsize=(max(7.5, 4.0 * ncol), 4.0 * nrow + 1.4), sharex=True,
                        height_ratios=[3, 1.2] * nrow, squeeze=False)
    mains, strips = axes[0::2], axes[1::2]
  else:
    fig, axes = _figure(nrow, ncol, figsize=(max(7.5, 4.0 * ncol), 3.2 * nrow + 1.5), sharex=True, squeeze=False)
    mains, strips = axes, None
  vals = [v for d in dims for a in data[d] for vs in data[d][a].values() for v in vs]
  floor, clipped = _floor(eps, vals) if eps is not None else (None, False)
  widths = [r['width'] for r in kept] or [1, 2]
  lazy_orders = {r['order'] for r in kept if _is_lazy(r['algorithm'])}
  for i, dim in enumerate(dims):
    ax = mains[i // ncol][i % ncol]
    for alg in algs:
      color, marker = style[alg]
      ws = sorted(data[dim][alg])
      if ws:
        v = [np.asarray(data[dim][alg][w], np.float64) for w in ws]
        if floor is not None:
          v = [np.maximum(x, floor) for x in v]
        ax.plot(ws, [np.median(x) for x in v], marker=marker, ms=3, color=color)
        ax.fill_between(ws, [x.min() for x in v], [x.max() for x in v], color=color, alpha=0.18, lw=0)
    if eps is not None:
      _rel_error_axis(ax, eps, floor, max(1.3, 1.3 * max(vals, default=1.0)), clipped)
      s = strips[i // ncol][i % ncol]
      _success_strip(s, eps, [(a, *style[a], okd[dim][a]) for a in algs if okd[dim][a]])
      ms = [f'{a} {analysis.smallest_passing(okd[dim][a]) or "-"}' for a in algs if okd[dim][a]]
      ax.set_title(f'd = {dim}   (m*: {", ".join(ms)})', fontsize=8.5)
      s.set_xlabel('width m')
      s.tick_params(labelbottom=True)
      if i % ncol == 0:
        s.set_ylabel('fraction of\nseeds < eps', fontsize=8)
      else:
        s.tick_params(labelleft=False)
      ax.tick_params(labelbottom=False)
    else:
      ax.set_yscale('log')
      lo, hi = _span(vals, 0.7, 1.4)
      ax.set_ylim(lo, hi)
      _decade_ticks(ax.yaxis, lo, hi)
      for order in lazy_orders:
        ax.axvline(float(_dimension_count(dim, order)), color='gray', ls=':', lw=1.2)
      ax.set_title(f'd = {dim}', fontsize=9)
      ax.set_xlabel('width m')
      ax.tick_params(labelbottom=True)
    if i % ncol == 0:
      ax.set_ylabel(ylabel, fontsize=8.5)
    else:
      ax.tick_params(labelleft=False)
    _width_axis(strips[i // ncol][i % ncol] if strips is not None else ax, widths)
  for j in range(len(dims), nrow * ncol):
    mains[j // ncol][j % ncol].set_visible(False)
    if strips is not None:
      strips[j // ncol][j % ncol].set_visible(False)
  if not dims:
    fig.text(0.5, 0.5, f'no run has a value of {key}', ha='center')
  order = ', '.join(map(str, sorted({r['order'] for r in kept})))
  n = _seed_count(kept)
  handles = [Line2D([], [], color=style[a][0], marker=style[a][1], ms=4, label=a) for a in algs]
  if eps is not None:
    handles += _eps_handles(eps)
    handles.append(Line2D([], [], color='gray', ls=':', label='1/2 of the seeds: m* = the first width at or above it'))
    sub = f'line: median over {n} seeds, band: min..max{_clip_note(floor, clipped, chr(10))}'
  else:
    if lazy_orders:
      handles.append(Line2D([], [], color='gray', ls=':', lw=1.2, label='lazy dimension count ' + ', '.join(
          _binom_label(o) for o in sorted(lazy_orders)) + ' (where the lazy optimum becomes exact)'))
    sub = (f'line: median over {n} seeds, band: min..max.  ||W − W0||_F / ||W0||_F of the m × d factors: '
           f'≳ 1 means the run left its initialization'
           + ('\nlazy arms: the step to the lazy optimum (linearized model), largest at the dimension count, '
              'falling like 1/m above it' if lazy_orders else ''))
  fig.suptitle(f'{title}order {order}\n{sub}', fontsize=9.5)
  _legend_below(fig, handles, ncols=min(len(handles), 3 if eps is not None else 4), fontsize=8)
  _save(fig, path, dpi=90)  # six panels: 90 dpi keeps the PNG well under the docs limit (200 KB)
  return fig


# ---- thresholds versus d ---------------------------------------------------------------------------

def lazy_threshold(rows: Sequence[Dict], eps: float, path: str, order: int):
  """Log-log m*(d) of the lazy algorithms, the tangent-rank threshold and the dimension count, with
  the fitted power laws as lines and their exponents (± stderr, bootstrap interval) in the legend."""
  lrows = [r for r in rows if r['order'] == order and _is_lazy(r['algorithm'])]
  ths = [t for t in analysis.thresholds(lrows, eps) if t['order'] == order]
  rank_ths = [t for t in analysis.tangent_rank_thresholds(lrows) if t['order'] == order]
  fits = analysis.exponents(ths) + analysis.exponents(rank_ths, 'rank_m_star')
  boot = analysis.bootstrap_exponents(lrows, eps)
  fig, ax = _figure(figsize=(6.4, 6.0))
  handles, values, marks = [], [], []
  arms = sorted({_arm(t) for t in ths})
  for i, arm in enumerate(arms):
    mine = [t for t in ths if _arm(t) == arm]
    pts = sorted((t['dim'], t['m_star']) for t in mine if t['m_star'] is not None)
    color, marker = f'C{i % 10}', ('o', 'x', '+', 'D', 'v')[i % 5]
    match = {k: mine[0].get(k) for k in ['algorithm'] + list(mine[0].get('axes') or ())}
    fit = _find(fits, quantity='m_star', **match)
    if pts:
      ax.plot(*zip(*pts), ls='none', marker=marker, ms=9 if marker == 'o' else 7, mfc='none', color=color)
      values += [p[1] for p in pts]
      marks += [p[1] for p in pts]
      _fit_line(ax, fit, [p[0] for p in pts], color)
    handles.append(Line2D([], [], color=color, marker=marker, mfc='none', ms=7,
                          label=f'{arm} m*: {_exponent_text(fit, _find(boot, **match))}'))
    top = max(r['width'] for r in lrows if _arm(r) == arm)
    miss = sorted(t['dim'] for t in mine if t['m_star'] is None)
    if miss:
      ax.plot(miss, [top] * len(miss), ls='none', marker='^', mfc='none', color=color)
      handles.append(Line2D([], [], color=color, marker='^', mfc='none', ls='none',
                            label=f'{arm}: no width up to {top} reached eps (m* > {top}; open triangle)'))
  pts = sorted((t['dim'], t['rank_m_star']) for t in rank_ths if t['rank_m_star'] is not None)
  if pts:
    ax.plot(*zip(*pts), ls='none', marker='s', ms=4, color='k')
    values += [p[1] for p in pts]
    fit = _find(fits, quantity='rank_m_star')
    handles.append(Line2D([], [], color='k', marker='s', ms=4, lw=0.8, ls=(0, (4, 2)),
                          label=f'tangent-rank threshold (smallest m with rank J = {_binom_label(order, False)}): '
                          f'{_exponent_text(fit)}'))
    _fit_line(ax, fit, [p[0] for p in pts], 'k', lw=0.8, ls=(0, (4, 2)))
  dims = sorted({t['dim'] for t in ths} | {t['dim'] for t in rank_ths})
  if dims:
    grid = np.geomspace(min(dims), max(dims), 100)
    count = analysis.fit_power_law(dims, _dimension_count(dims, order)) if len(dims) > 1 else None
    asym = math.factorial(order)
    ax.plot(grid, _dimension_count(grid, order), color='gray', lw=1.2)
    ax.plot(grid, grid ** (order - 1) / asym, color='gray', lw=1, ls=':')
    values += list(_dimension_count(dims, order)) + list(np.asarray(dims, float) ** (order - 1) / asym)
    handles.append(Line2D([], [], color='gray', lw=1.2, label=f'dimension count {_binom_label(order)}'
                          + (f' (slope {_num(count["exponent"])} over these d)' if count else '')))
    handles.append(Line2D([], [], color='gray', lw=1, ls=':',
                          label=f'its asymptote d^{order - 1}/{asym} (slope {order - 1} = l − 1)'))
  ax.set_xscale('log')
  ax.set_yscale('log')
  lo, hi = _span(values)
  ax.set_ylim(lo, hi)
  _log_ticks(ax.yaxis, lo, hi, marks, smallest=min(values, default=lo))
  if dims:
    ax.set_xlim(min(dims) / 1.1, max(dims) * 1.1)
    _data_ticks(ax.xaxis, dims)
  ax.grid(True, which='major', color='0.9', lw=0.6)
  ax.set_xlabel('dimension d')
  ax.set_ylabel('width m (number of components)')
  n = _seed_count(lrows)
  ax.set_title(f'lazy regime, order l = {order}: threshold width versus d\n'
               f'm* = smallest width at which ≥ 1/2 of the {n} seeds reach rel_error < {eps:g}', fontsize=9.5)
  nb = next((b['samples'] for b in boot), None)
  _legend_below(fig, handles, title='lines: least-squares power-law fits of the markers, exponent ± its standard '
                'error' + (f'; bootstrap: {nb} resamplings of the seeds' if nb else ''), fontsize=7.5)
  _save(fig, path)
  return fig


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


def _same_series(r: Dict, alg, order, rank, extra) -> bool:
  return (r['algorithm'], r['order'], r['rank'], analysis.extra_of(r)) == (alg, order, rank, extra)


def m_star_vs_dim(rows: Sequence[Dict], eps: float, path: str):
  """Log-log m*(d) of every algorithm, one series per (algorithm, order, rank[, alpha]): markers =
  m*, bars = per-seed thresholds min..max, line = the fitted power law, its exponent ± stderr and
  the bootstrap interval in the legend; open triangles at the largest width mark d where no width
  reached eps (m* > max width); the lazy dimension count C(d+l-1,l)/d for scale."""
  ths = analysis.thresholds(rows, eps)
  fits = analysis.exponents(ths)
  boot = analysis.bootstrap_exponents(rows, eps)
  spread = {(t['algorithm'], t['order'], t['dim'], t['rank'], analysis.extra_of(t)):
            [m for m in t['seed_m_star'].values() if m is not None] for t in analysis.seed_thresholds(rows, eps)}
  series = collections.defaultdict(list)
  for t in ths:
    series[(t['algorithm'], t['order'], t['rank'], analysis.extra_of(t))].append(t)
  drawn = [kv for kv in sorted(series.items(), key=lambda kv: str(kv[0])) if len({t['dim'] for t in kv[1]}) >= 2]
  orders = sorted({k[1] for k, _ in drawn})
  ranks = sorted({k[2] for k, _ in drawn})
  common = len(orders) == 1 and len(ranks) == 1  # then l and r go in the title, not in every label
  fig, ax = _figure(figsize=(7.0, 6.6))
  handles, values, marks, any_miss = [], [], [], False
  for i, ((alg, order, rank, extra), ts) in enumerate(drawn):
    color, marker = f'C{i % 10}', MARKERS[i % len(MARKERS)]
    shift = 1.0 + 0.025 * (i - (len(drawn) - 1) / 2)  # side by side, so the error bars do not overlap
    pts = sorted((t['dim'], t['m_star']) for t in ts if t['m_star'] is not None)
    match = dict(order=order, rank=rank, **_match(ts[0]))
    fit = _find(fits, quantity='m_star', **match)
    b = _find(boot, **match)
    label = _series_label(_arm(ts[0]), extra[0], '' if common else f', l = {order}, r = {rank}', rows)
    if pts:
      dims, ms = map(np.asarray, zip(*pts))
      per_seed = [spread.get((alg, order, d, rank, extra)) or [m] for d, m in pts]
      err = np.array([[max(m - min(p), 0) for m, p in zip(ms, per_seed)],
                      [max(max(p) - m, 0) for m, p in zip(ms, per_seed)]])
      ax.errorbar(dims * shift, ms, yerr=err, ls='none', marker=marker, ms=5, capsize=3, color=color)
      values += list(ms - err[0]) + list(ms + err[1])
      marks += list(ms)
      _fit_line(ax, fit, dims, color)
    handles.append(Line2D([], [], color=color, marker=marker, ms=5, label=f'{label}: {_exponent_text(fit, b)}'))
    top = max(r['width'] for r in rows if _same_series(r, alg, order, rank, extra))
    miss = sorted(t['dim'] for t in ts if t['m_star'] is None)
    if miss:
      any_miss = True
      ax.plot(np.asarray(miss) * shift, [top] * len(miss), ls='none', marker='^', ms=7, mfc='none', color=color)
      values.append(top)
  all_dims = sorted({t['dim'] for _, ts in drawn for t in ts})
  for order in orders:  # what the lazy regime needs, for scale
    dims = sorted({t['dim'] for k, ts in drawn if k[1] == order for t in ts})
    if len(dims) > 1:
      grid = np.geomspace(min(dims), max(dims), 100)
      count = analysis.fit_power_law(dims, _dimension_count(dims, order))
      ax.plot(grid, _dimension_count(grid, order), color='gray', lw=1.2, ls='--')
      values += list(_dimension_count(dims, order))
      handles.append(Line2D([], [], color='gray', lw=1.2, ls='--',
                            label=f'lazy dimension count {_binom_label(order)}'
                            + (f' (slope {_num(count["exponent"])} over these d)' if count else '')))
  if len(ranks) == 1 and ranks[0] is not None:  # no width below r can fit a rank-r target
    ax.axhline(ranks[0], color='gray', lw=0.8, ls=':')
    values.append(ranks[0])
    handles.append(Line2D([], [], color='gray', lw=0.8, ls=':',
                          label=f'm = r = {ranks[0]}: the fewest components that can fit a rank-{ranks[0]} T*'))
  n = _seed_count(rows)
  handles.append(Line2D([], [], color='0.3', marker='|', ms=12, ls='none',
                        label=f'bars: per-seed thresholds (each seed\'s smallest width below eps), min..max over '
                        f'{n} seeds'))
  if any_miss:
    handles.append(Line2D([], [], color='0.3', marker='^', mfc='none', ls='none',
                          label='open triangle at the largest width: no width reached eps (m* > grid)'))
  ax.set_xscale('log')
  ax.set_yscale('log')
  lo, hi = _span(values)
  ax.set_ylim(lo, hi)
  _log_ticks(ax.yaxis, lo, hi, marks, smallest=min(values))
  if all_dims:
    ax.set_xlim(min(all_dims) / 1.12, max(all_dims) * 1.12)
    _data_ticks(ax.xaxis, all_dims)
  ax.grid(True, which='major', color='0.9', lw=0.6)
  ax.set_xlabel('dimension d')
  ax.set_ylabel('m* (number of components)')
  what = f'order l = {orders[0]}, rank r = {ranks[0]}: ' if common else ''
  ax.set_title(f'{what}smallest width m* versus dimension d\n'
               f'm* = smallest width at which ≥ 1/2 of the {n} seeds reach rel_error < {eps:g}', fontsize=9.5)
  nb = next((b['samples'] for b in boot), None)
  _legend_below(fig, handles, title='markers: m*; solid lines: least-squares power-law fits, exponent ± its '
                'standard error' + (f'; bootstrap: {nb} resamplings of the seeds' if nb else ''), fontsize=7.5)
  _save(fig, path)
  return fig


def m_star_vs_rank(rows: Sequence[Dict], eps: float, path: str):
  """Log-log m*(r), one series per (algorithm, order, d[, alpha]): markers = m*, bars = per-seed
  thresholds min..max, line = the fitted power law (exponent ± stderr in the legend); the line m = r
  (the fewest components that can fit a rank-r target) for reference."""
  ths = analysis.thresholds(rows, eps)
  fits = analysis.rank_exponents(ths)
  spread = {(t['algorithm'], t['order'], t['dim'], t['rank'], analysis.extra_of(t)):
            [m for m in t['seed_m_star'].values() if m is not None] for t in analysis.seed_thresholds(rows, eps)}
  series = collections.defaultdict(list)
  for t in ths:
    series[(t['algorithm'], t['order'], t['dim'], analysis.extra_of(t))].append(t)
  fig, ax = _figure(figsize=(6.6, 6.0))
  ranks = sorted({t['rank'] for t in ths})
  drawn = [kv for kv in sorted(series.items(), key=lambda kv: str(kv[0]))
           if len({t['rank'] for t in kv[1]}) >= 2 and any(t['m_star'] is not None for t in kv[1])]
  handles, values, marks = [], list(ranks), []
  for i, ((alg, order, dim, extra), ts) in enumerate(drawn):
    color, marker = f'C{i % 10}', MARKERS[i % len(MARKERS)]
    shift = 1.0 + 0.02 * (i - (len(drawn) - 1) / 2)
    pts = sorted((t['rank'], t['m_star']) for t in ts if t['m_star'] is not None)
    rs, ms = map(np.asarray, zip(*pts))
    per_seed = [spread.get((alg, order, dim, k, extra)) or [m] for k, m in pts]
    err = np.array([[max(m - min(p), 0) for m, p in zip(ms, per_seed)],
                    [max(max(p) - m, 0) for m, p in zip(ms, per_seed)]])
    ax.errorbar(rs * shift, ms, yerr=err, ls='none', marker=marker, ms=5, capsize=3, color=color)
    values += list(ms - err[0]) + list(ms + err[1])
    marks += list(ms)
    fit = _find(fits, order=order, dim=dim, **_match(ts[0]))
    _fit_line(ax, fit, rs, color)
    handles.append(Line2D([], [], color=color, marker=marker, ms=5, label=_series_label(
        _arm(ts[0]), extra[0], f', l = {order}, d = {dim}: {_exponent_text(fit)}', rows)))
  ax.plot(ranks, ranks, color='gray', lw=1, ls=':')
  handles.append(Line2D([], [], color='gray', lw=1, ls=':', label='m = r: the fewest components that can fit T*'))
  handles.append(Line2D([], [], color='0.3', marker='|', ms=12, ls='none',
                        label=f'bars: per-seed thresholds min..max over {_seed_count(rows)} seeds'))
  ax.set_xscale('log')
  ax.set_yscale('log')
  lo, hi = _span(values)
  ax.set_ylim(lo, hi)
  _log_ticks(ax.yaxis, lo, hi, marks, smallest=min(values))
  ax.set_xlim(min(ranks) / 1.15, max(ranks) * 1.15)
  _data_ticks(ax.xaxis, ranks)
  ax.grid(True, which='major', color='0.9', lw=0.6)
  ax.set_xlabel('rank r of T*')
  ax.set_ylabel('m* (number of components)')
  ax.set_title(f'smallest width m* versus the rank of T*\n'
               f'm* = smallest width at which ≥ 1/2 of the seeds reach rel_error < {eps:g}', fontsize=9.5)
  _legend_below(fig, handles, title='markers: m*; lines: least-squares power-law fits in r, exponent ± its '
                'standard error', fontsize=7.5)
  _save(fig, path)
  return fig


def success_vs_overparam(rows: Sequence[Dict], eps: float, path: str):
  """Share of seeds reaching rel_error < eps versus the over-parameterization m / r (the local-minima
  experiment): one panel per arm[, alpha], one line per rank, colored by rank."""
  series = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    series[(_arm(r), r.get('alpha'))][(r['rank'], r['width'] / r['rank'])].append(
        r['rel_error'] is not None and r['rel_error'] < eps)
  ranks = sorted({r['rank'] for r in rows})
  colors = matplotlib.colormaps['viridis'](np.linspace(0.0, 0.9, len(ranks)))
  fig, axes = _figure(1, len(series), figsize=(max(6.0, 4.6 * len(series)), 4.6), sharey=True, squeeze=False)
  ratios = sorted({q for s in series.values() for (_, q) in s})
  handles = {}
  for ax, ((alg, alpha), by_cell) in zip(axes[0], sorted(series.items(), key=lambda kv: str(kv[0]))):
    for rank, color, marker in zip(ranks, colors, MARKERS * len(ranks)):
      pts = sorted((q, np.mean(v), len(v)) for (k, q), v in by_cell.items() if k == rank)
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=4, color=color)
        handles[rank] = Line2D([], [], color=color, marker=marker, ms=4,
                               label=f'r = {rank} ({min(p[2] for p in pts)} seeds per point)')
    ax.axvline(1.0, color='gray', lw=0.8, ls=':')
    ax.axhline(0.5, color='gray', lw=0.8, ls='--')
    ax.set_xscale('log', base=2)
    ax.set_xlim(min(ratios) / 1.15, max(ratios) * 1.15)
    pow2 = [2.0 ** k for k in range(math.floor(math.log2(min(ratios))), math.ceil(math.log2(max(ratios))) + 1)]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(pow2))  # m / r = 1/2, 1, 2, 4, 8
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _frac(v)))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel('over-parameterization m / r')
    ax.set_title(_series_label(alg, alpha, '', rows), fontsize=10)
  axes[0][0].set_ylabel(f'fraction of seeds with rel_error < {eps:g}')
  fig.suptitle('success rate versus over-parameterization m / r:\nthe fraction of random inits that fit T*',
               fontsize=10)
  extra = [Line2D([], [], color='gray', lw=0.8, ls=':', label='m = r (no over-parameterization)'),
           Line2D([], [], color='gray', lw=0.8, ls='--', label='1/2 of the seeds (the m* rule)')]
  _legend_below(fig, [handles[k] for k in sorted(handles)] + extra, ncols=3)
  _save(fig, path)
  return fig


# ---- alpha scaling ------------------------------------------------------------------------------------

def alpha_scaling(rows: Sequence[Dict], eps: float, path: str):
  """rel_error, movement and linearization gap of the alpha-scaled algorithms (gd) versus alpha
  (median over seeds, band = min..max, diverged runs left out and marked at the top edge), one line
  per (arm, d, width); the lazy algorithms' values as the alpha -> inf reference."""
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
  fig, axes = _figure(1, 3, figsize=(13, 5.2))
  handles, vals = [], collections.defaultdict(list)
  all_alphas = sorted({r['alpha'] for r in rows if registry.flag(r['algorithm'], 'alpha_scaled')
                       and r.get('alpha') is not None})
  for (dim, width, arm), by_alpha in sorted(groups.items()):
    alphas = sorted(by_alpha)
    color = f'C{len(handles) % 10}'
    seeds = max(len(v) for v in by_alpha.values())
    handles.append(Line2D([], [], color=color, marker='o', label=f'{arm}, d = {dim}, m = {width}: median over '
                          f'{seeds} seeds, band min..max'))
    for ax, key in zip(axes, keys):
      v = [[r[key] for r in by_alpha[a] if r.get(key) is not None] for a in alphas]
      pts = [(a, np.median(x), min(x), max(x)) for a, x in zip(alphas, v) if x]
      if not pts:
        continue
      a, med, lo, hi = map(np.asarray, zip(*pts))
      vals[key] += list(lo) + list(hi)
      ax.plot(a, med, marker='o', ms=4, color=color)
      ax.fill_between(a, lo, hi, color=color, alpha=0.2, lw=0)
      for alg, ls in zip(sorted(ref[(dim, width)]), ('--', ':', '-.', (0, (1, 3)))):
        lazy_rows = ref[(dim, width)].get(alg, [])
        lv = [r[key] for r in lazy_rows if r.get(key) is not None]
        if not lv or key == 'linearization_gap':
          continue
        if key == 'movement':  # the alpha model moves W - W0 = (lazy step) / alpha
          ax.plot(a, np.median(lv) / a, ls=ls, color=color, lw=1)
          vals[key] += list(np.median(lv) / a)
          handles.append(Line2D([], [], ls=ls, color=color, lw=1,
                                label=f'{alg} movement / alpha (the lazy prediction; middle panel)'))
        else:
          ax.axhline(np.median(lv), ls=ls, color=color, lw=1)
          vals[key].append(np.median(lv))
          handles.append(Line2D([], [], ls=ls, color=color, lw=1,
                                label=f'{alg} at this width: the alpha → ∞ limit (left panel)'))
  diverged = sorted({r['alpha'] for r in rows if registry.flag(r['algorithm'], 'alpha_scaled')
                     and r.get('alpha') is not None and r['rel_error'] is None})
  if diverged:  # no number to plot: mark where they are, on the top edge
    top = matplotlib.transforms.blended_transform_factory(axes[0].transData, axes[0].transAxes)
    axes[0].plot(diverged, [0.96] * len(diverged), ls='none', marker='x', ms=7, color='r', transform=top,
                 clip_on=False)
    handles.append(Line2D([], [], ls='none', marker='x', color='r', label='diverged at this alpha (some seeds; '
                          'no value, marked on the top edge)'))
  titles = ('relative error ||T − T*|| / ||T*||', 'movement ||W − W0||_F / ||W0||_F',
            'linearization gap ||T(W) − T_lin(W)|| / ||T*||')
  for ax, key, t in zip(axes, keys, titles):
    ax.set_xscale('log')
    ax.set_yscale('log')
    if all_alphas:
      ax.set_xlim(min(all_alphas) / 2, max(all_alphas) * 2)
      _decade_ticks(ax.xaxis, min(all_alphas), max(all_alphas))
    lo, hi = _span(vals[key] + ([eps] if key == 'rel_error' else []), 0.6, 1.8)
    if key == 'rel_error':
      ax.axhspan(lo, eps, color=SUCCESS_COLOR, alpha=0.08, lw=0)
      ax.axhline(eps, color='k', ls='--', lw=0.9)
      hi = max(hi, 1.5)
    ax.set_ylim(lo, hi)
    _decade_ticks(ax.yaxis, lo, hi, extra=[eps] if key == 'rel_error' else ())
    ax.set_xlabel('alpha (model scale; alpha → ∞ is the lazy limit)')
    ax.set_ylabel(t)
  handles += _eps_handles(eps)
  fig.suptitle('alpha-scaling (Chizat, Oyallon, Bach): GD on T(W0) + alpha (T(W) − T(W0)) with the loss divided '
               'by alpha^2', fontsize=11)
  _legend_below(fig, handles, ncols=2)
  _save(fig, path)
  return fig


# ---- deflation --------------------------------------------------------------------------------------

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
  fig, axes = _figure(1, 3, figsize=(15, 5.0))
  runs = sorted({(r['algorithm'], r['dim'], r['width']) for r, _ in trajs})
  what = '; '.join(f'{a}, d = {d}, m = {m}' for a, d, m in runs)
  for r, z in trajs[:max_runs]:
    axes[0].plot(z['iteration'], np.maximum(z['rel_error'], 1e-16), label=f"seed {r['seed']}"
                 + ('' if len(runs) == 1 else f" ({r['algorithm']}, d = {r['dim']}, m = {r['width']})"))
  axes[0].axhspan(eps / 3, eps, color=SUCCESS_COLOR, alpha=0.08, lw=0)
  axes[0].axhline(eps, color='k', ls='--', lw=0.9, label=f'eps = {eps:g}: runs stop once below')
  axes[0].set_yscale('log')
  if trajs:
    lo = min(float(np.min(z['rel_error'])) for _, z in trajs[:max_runs])
    axes[0].set_ylim(min(lo, eps) / 1.5, 1.5)
    _decade_ticks(axes[0].yaxis, min(lo, eps) / 1.5, 1.5, extra=[eps])
  axes[0].set_xlabel('iteration')
  axes[0].set_ylabel('relative error ||T − T*|| / ||T*||')
  axes[0].set_title(f'loss staircase: one step per fitted component\n({min(len(trajs), max_runs)} of '
                    f'{len(trajs)} runs)', fontsize=10)
  axes[0].legend(fontsize=7.5)
  if trajs:
    r, z = trajs[0]
    cs = np.abs(z['target_weight'][0])
    steps = analysis.fit_steps(z['iteration'], z['aligned_weight'], z['target_weight'][0])
    for j in np.argsort(-cs):
      line, = axes[1].plot(z['iteration'], z['aligned_weight'][:, j] / cs[j], label=f'a_{j + 1}, c*_{j + 1} = '
                           f'{_frac(cs[j])}')
      if steps[j] is not None:
        axes[1].axvline(steps[j], color=line.get_color(), ls=':', lw=1)
    axes[1].axhline(0.5, color='gray', lw=0.6, ls='--')
    order = ', '.join(f'a_{j + 1}' for j in analysis.fit_order(steps) if steps[j] is not None)
    axes[1].set_title(f"seed {r['seed']}: fitted in the order {order}\n"
                      '(dotted: the iteration at which a_j is half fitted)', fontsize=10)
  axes[1].set_xlabel('iteration')
  axes[1].set_ylabel('weight aligned with a_j / c*_j  (1 = fitted)')
  axes[1].legend(fontsize=7.5, loc='center right')
  allc, alls = [], []
  for i, (r, z) in enumerate(trajs):
    cs = np.abs(z['target_weight'][0])
    steps = analysis.fit_steps(z['iteration'], z['aligned_weight'], z['target_weight'][0])
    pts = [(cs[j], s) for j, s in enumerate(steps) if s is not None]
    if pts:
      axes[2].plot(*zip(*sorted(pts)), marker='o', ms=4, alpha=0.6, lw=0.8, color=f'C{i % 10}')
      allc += [p[0] for p in pts]
      alls += [p[1] for p in pts]
  axes[2].set_xscale('log')
  axes[2].set_yscale('log')
  if allc:
    axes[2].set_xlim(min(allc) / 1.3, max(allc) * 1.3)
    _data_ticks(axes[2].xaxis, allc)
    axes[2].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _frac(v)))
    lo, hi = _span(alls)
    axes[2].set_ylim(lo, hi)
    _log_ticks(axes[2].yaxis, lo, hi, alls)
  axes[2].set_xlabel('weight c*_j of the true component a_j')
  axes[2].set_ylabel('iteration at which a_j is half fitted')
  axes[2].set_title(f'every run ({len(trajs)}, one line each): larger components first', fontsize=10)
  fig.suptitle(f'deflation: {what}' if what else 'deflation', fontsize=11)
  _save(fig, path)
  return fig


def _alpha_swept(rows) -> set:
  """Alpha-scaled algorithms with several alphas in the rows (the alpha_scaling figure draws them)."""
  algs = {r['algorithm'] for r in rows if registry.flag(r['algorithm'], 'alpha_scaled')}
  return {a for a in algs if len({r.get('alpha') for r in rows if r['algorithm'] == a}) > 1}


def draw_all(rows: Sequence[Dict], eps: float, figures_dir: str, workdir: Optional[str] = None) -> List[str]:
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
    for name, key, label, e in (('rel_error_vs_width', 'rel_error', 'relative error ||T − T*|| / ||T*||', eps),
                                ('movement_vs_width', 'movement', 'movement ||W − W0||_F / ||W0||_F', None)):
      p = os.path.join(figures_dir, f'{name}.png')
      by_dim_panels(rows, p, key, label, eps=e, title=f'{name.split("_vs_")[0].replace("_", " ")} versus width, ')
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
  line per d (band = min..max; diverged runs left out), n* of each d marked on the top edge.
  gap=True adds train_error dashed (no band): the train/population gap."""
  series = _by_regime(_sample_rows(rows))
  keys = sorted(series, key=str)
  fig, axes = _figure(1, len(keys), figsize=(max(7.0, 4.4 * len(keys)), 4.8), squeeze=False, sharey=True)
  dims = sorted({d for k in keys for d in series[k]})
  colors = {d: f'C{i % 10}' for i, d in enumerate(dims)}
  vals = [r[k] for r in _sample_rows(rows) for k in (key, 'train_error') if r.get(k) is not None]
  floor, clipped = _floor(eps, vals)
  top = max(1.3, 1.3 * max(vals, default=1.0))
  all_n = sorted({r['num_samples'] for r in _sample_rows(rows)})
  n = _seed_count(_sample_rows(rows))
  for ax, (alg, width) in zip(axes[0], keys):
    stars = []
    for dim in sorted(series[(alg, width)]):
      by_n = series[(alg, width)][dim]
      color = colors[dim]
      pts = [(m, *_median_band([max(r[key], floor) for r in by_n[m] if r.get(key) is not None])) for m in sorted(by_n)
             if any(r.get(key) is not None for r in by_n[m])]
      if pts:
        ns, med, lo, hi = map(np.asarray, zip(*pts))
        ax.plot(ns, med, marker='o', ms=3, color=color)
        if not gap:
          ax.fill_between(ns, lo, hi, color=color, alpha=0.15, lw=0)
      if gap:
        tr = [(m, np.median([max(r['train_error'], floor) for r in by_n[m] if r.get('train_error') is not None]))
              for m in sorted(by_n) if any(r.get('train_error') is not None for r in by_n[m])]
        if tr:
          ax.plot(*zip(*tr), ls='--', marker='x', ms=3, color=color)
      ns_ok = {m: [r[key] is not None and r[key] < eps for r in by_n[m]] for m in by_n}
      stars.append((dim, analysis.smallest_passing(ns_ok)))
    edge = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for dim, s in stars:
      if s is not None:
        ax.axvline(s, color=colors[dim], lw=0.8, ls=':', alpha=0.8)
        ax.plot([s], [0.98], marker='v', ms=6, color=colors[dim], transform=edge, clip_on=False)
    _rel_error_axis(ax, eps, floor, top, clipped)
    ax.set_xscale('log')
    ax.set_xlim(min(all_n) / 1.2, max(all_n) * 1.2)
    _log_ticks(ax.xaxis, min(all_n) / 1.2, max(all_n) * 1.2, [min(all_n)], subs=(1.0, 2.0, 5.0))
    ax.set_xlabel('training samples n')
    ns = ', '.join(f'd = {d}: {s if s is not None else "> " + str(max(all_n))}' for d, s in stars)
    ax.set_title(f'{alg}, m = {width}\nn*: {ns}', fontsize=9)
  axes[0][0].set_ylabel('population rel_error ||T − T*|| / ||T*|| (exact)' if not gap else
                        'relative error (solid: population, dashed: train)')
  handles = [Line2D([], [], color=colors[d], marker='o', ms=3, label=f'd = {d}') for d in dims]
  if gap:
    handles += [Line2D([], [], color='0.3', marker='o', ms=3, label='population error (exact)'),
                Line2D([], [], color='0.3', ls='--', marker='x', ms=3, label='training error (on the n samples)')]
  handles += _eps_handles(eps, 'population rel_error', stop='training stops at a lower training error')
  handles.append(Line2D([], [], color='0.3', marker='v', ls=':', lw=0.8,
                        label=f'n* of that d: smallest n with ≥ 1/2 of the seeds below eps'))
  what = ('training (dashed) and population (solid) error versus n' if gap else
          'population error versus the number of training samples n')
  band = '' if gap else ', band: min..max'
  fig.suptitle(f'{what}\nline: median over {n} seeds{band}{_clip_note(floor, clipped, chr(10))}', fontsize=10)
  _legend_below(fig, handles, ncols=4)
  _save(fig, path, dpi=90)
  return fig


def n_star_vs_dim(rows: Sequence[Dict], eps: float, path: str):
  """Log-log n*(d) per (algorithm, width): markers = n*, bars = per-seed n* min..max, line = the
  fitted power law (exponent ± stderr in the legend), and the dimension C(d+l-1, l) of degree-l
  polynomials <T, H_l(x)> (what a kernel needs) for scale."""
  srows = _sample_rows(rows)
  ths = analysis.sample_thresholds(srows, eps)
  fits = analysis.sample_exponents(ths)
  series = collections.defaultdict(list)
  for t in ths:
    series[(t['algorithm'], t['order'], t['rank'], t['width'])].append(t)
  fig, ax = _figure(figsize=(6.8, 6.0))
  top = max(r['num_samples'] for r in srows)
  handles, values, marks, any_miss = [], [], [], False
  keys = sorted(series, key=str)
  for i, key in enumerate(keys):
    alg, order, rank, width = key
    ts = series[key]
    color, marker = f'C{i % 10}', MARKERS[i % len(MARKERS)]
    shift = 1.0 + 0.02 * (i - (len(keys) - 1) / 2)
    pts = sorted((t['dim'], t['n_star'], [v for v in t['seed_n_star'].values() if v is not None]) for t in ts
                 if t['n_star'] is not None)
    fit = _find(fits, algorithm=alg, order=order, rank=rank, width=width)
    if pts:
      dims, ns, per = zip(*pts)
      dims, ns = np.asarray(dims), np.asarray(ns)
      err = np.array([[max(n - min(p or [n]), 0) for n, p in zip(ns, per)],
                      [max(max(p or [n]) - n, 0) for n, p in zip(ns, per)]])
      ax.errorbar(dims * shift, ns, yerr=err, ls='none', marker=marker, ms=5, capsize=3, color=color)
      values += list(ns - err[0]) + list(ns + err[1])
      marks += list(ns)
      _fit_line(ax, fit, dims, color)
    handles.append(Line2D([], [], color=color, marker=marker, ms=5,
                          label=f'{alg}, m = {width}, r = {rank}: {_exponent_text(fit)}'))
    miss = sorted(t['dim'] for t in ts if t['n_star'] is None)
    if miss:  # n* above the largest n of the grid
      any_miss = True
      ax.plot(miss, [top] * len(miss), ls='none', marker='^', mfc='none', color=color)
      values.append(top)
  dims = sorted({t['dim'] for t in ths})
  for order in sorted({t['order'] for t in ths}):
    if len(dims) > 1:
      grid = np.geomspace(min(dims), max(dims), 100)
      count = lambda d: np.prod([np.asarray(d, float) + k for k in range(order)], axis=0) / math.factorial(order)
      ax.plot(grid, count(grid), color='gray', lw=1.2, ls='--')
      values += list(count(dims))
      slope = analysis.fit_power_law(dims, count(dims))
      handles.append(Line2D([], [], color='gray', lw=1.2, ls='--',
                            label=f'{_binom_label(order, False)}: dimension of degree-{order} polynomials <T, H(x)>, '
                            f'what a kernel needs (slope {_num(slope["exponent"])})'))
  handles.append(Line2D([], [], color='0.3', marker='|', ms=12, ls='none',
                        label=f'bars: per-seed n* (each seed\'s smallest n below eps), min..max over '
                        f'{_seed_count(srows)} seeds'))
  if any_miss:
    handles.append(Line2D([], [], color='0.3', marker='^', mfc='none', ls='none',
                          label=f'open triangle at n = {top}: no n of the grid reached eps (n* > {top})'))
  ax.set_xscale('log')
  ax.set_yscale('log')
  lo, hi = _span(values)
  ax.set_ylim(lo, hi)
  _log_ticks(ax.yaxis, lo, hi, marks, smallest=min(values, default=lo))
  if dims:
    ax.set_xlim(min(dims) / 1.1, max(dims) * 1.1)
    _data_ticks(ax.xaxis, dims)
  ax.grid(True, which='major', color='0.9', lw=0.6)
  ax.set_xlabel('dimension d')
  ax.set_ylabel('n* (training samples)')
  ax.set_title(f'samples needed versus d\nn* = smallest n at which ≥ 1/2 of the seeds reach population '
               f'rel_error < {eps:g}', fontsize=9.5)
  _legend_below(fig, handles, title='markers: n*; solid lines: least-squares power-law fits, exponent ± its '
                'standard error', fontsize=7.5)
  _save(fig, path)
  return fig


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
