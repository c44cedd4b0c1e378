"""The figures, drawn from small synthetic row lists (no training, no JAX compilation): each is a valid
PNG under the docs size limit, says its fitted exponents with their uncertainty, shows the data
(every d a tick, the smallest m* inside the axis with a labelled tick at or below it), never prints
'-0.00', and keeps every text inside the figure."""

import math
import os

import matplotlib
import matplotlib.image
import matplotlib.text
from matplotlib.backends.backend_agg import FigureCanvasAgg
import numpy as np
import pytest

from overparam import algorithms  # noqa: F401 - the built-in algorithms and their flags (lazy, alpha_scaled)
from overparam import analysis, plots

EPS = 0.05
DIMS = (6, 8, 12, 16)
SEEDS = 4
PNG = b'\x89PNG\r\n\x1a\n'


def _count(d, order=3):
  return math.comb(d + order - 1, order) / d


def _row(alg, d, w, seed, rel, **kw):
  return {'algorithm': alg, 'order': 3, 'dim': d, 'rank': 3, 'width': w, 'seed': seed, 'rel_error': rel,
          'status': 'converged' if rel is not None and rel < EPS else 'max_steps', 'movement': 1.0 + 10.0 / w,
          'alpha': None, 'linearization_gap': 1.0, **kw}


def tensor_rows():
  """lazy_exact (threshold = the first grid width above the count, exact above it), beyond_lazy flat at
  m* = 3 (exponent exactly 0: the '-0.00' trap), gd with a threshold that grows with d and varies over
  seeds (a non-zero exponent with a non-zero stderr and bootstrap interval)."""
  rows = []
  lazy_widths = (5, 7, 10, 14, 20, 28, 40, 56)
  gd_th = {6: (3, 4, 4, 6), 8: (4, 4, 6, 6), 12: (4, 6, 6, 8), 16: (6, 8, 8, 8)}
  for d in DIMS:
    sym = math.comb(d + 2, 3)
    for s in range(SEEDS):
      for w in lazy_widths:
        full = w >= _count(d)
        rows.append(_row('lazy_exact', d, w, s, 1e-13 if full else 0.6 - 0.01 * w, tangent_rank=sym if full else w * d,
                         sym_dim=sym))
      for w in (2, 3, 4, 6, 8):
        rows.append(_row('beyond_lazy', d, w, s, 0.045 if w >= 3 else 0.4))
        rows.append(_row('gd', d, w, s, 0.048 if w >= gd_th[d][s] else 0.3 + 0.01 * s))
  return rows


def _texts(fig):
  return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def _legend_text(fig):
  legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
  return '\n'.join(t.get_text() for lg in legends for t in lg.get_texts()) + '\n' + '\n'.join(
      lg.get_title().get_text() for lg in legends)


def _fmt(v):
  s = f'{v:.2f}'
  return '0.00' if s == '-0.00' else s


def _in_view(t, fig):
  """False for the label of a tick outside its axis' view (not drawn)."""
  for ax in fig.axes:
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
      lo, hi = sorted(lim)
      for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        if t is tick.label1 or t is tick.label2:
          return lo * (1 - 1e-9) <= tick.get_loc() <= hi * (1 + 1e-9)
  return True


def check_figure(fig, path):
  with open(path, 'rb') as f:
    head = f.read(8)
  assert head == PNG
  assert 0 < os.path.getsize(path) <= 200 * 1024
  assert matplotlib.image.imread(path).ndim == 3
  canvas = FigureCanvasAgg(fig)  # the figure is closed after saving: draw it again, with its layout
  canvas.draw()
  renderer = canvas.get_renderer()
  W, H = fig.bbox.width, fig.bbox.height
  for t in _texts(fig):
    if not _in_view(t, fig):
      continue
    bb = t.get_window_extent(renderer)
    assert bb.x0 >= -1 and bb.y0 >= -1 and bb.x1 <= W + 1 and bb.y1 <= H + 1, (
        f'text {t.get_text()!r} extends outside the figure: {bb} in {W} x {H}')
    assert '-0.00' not in t.get_text(), t.get_text()


def _labelled_ticks(axis):
  lo, hi = sorted(axis.get_view_interval())
  return [v for v in axis.get_majorticklocs() if lo <= v <= hi]


def test_m_star_vs_dim(tmp_path):
  rows = tensor_rows()
  p = str(tmp_path / 'm_star_vs_dim.png')
  fig = plots.m_star_vs_dim(rows, EPS, p)
  check_figure(fig, p)
  legend = _legend_text(fig)
  ths = analysis.thresholds(rows, EPS)
  fits = analysis.exponents(ths)
  boot = analysis.bootstrap_exponents(rows, EPS)
  assert {f['algorithm'] for f in fits} == {'lazy_exact', 'beyond_lazy', 'gd'}
  for f in fits:
    assert f'{_fmt(f["exponent"])} ± {_fmt(f["stderr"])}' in legend, (f['algorithm'], legend)
    b = next(e for e in boot if e['algorithm'] == f['algorithm'])
    assert f'[{_fmt(b["interval"][0])}, {_fmt(b["interval"][1])}]' in legend
  gd = next(f for f in fits if f['algorithm'] == 'gd')
  assert gd['stderr'] > 0.005 and abs(gd['exponent']) > 0.1  # the fixture has a real uncertainty to show
  assert '(flat)' in legend  # beyond_lazy: exponent 0 exactly
  assert 'C(d+2,3)/d' in legend
  ax = fig.axes[0]
  smallest = min(t['m_star'] for t in ths)
  lo, hi = ax.get_ylim()
  assert lo < smallest < hi
  assert any(lo <= v <= smallest for v in _labelled_ticks(ax.yaxis)), 'no labelled tick at or below the smallest m*'
  assert {3.0, 4.0} <= set(_labelled_ticks(ax.yaxis))  # m* = 3 and 4 are told apart
  assert set(map(float, DIMS)) <= set(_labelled_ticks(ax.xaxis))
  assert len(ax.get_lines()) >= 4  # fitted power laws and the count are drawn as lines


def test_lazy_threshold(tmp_path):
  rows = tensor_rows()
  p = str(tmp_path / 'lazy_threshold_l3.png')
  fig = plots.lazy_threshold(rows, EPS, p, 3)
  check_figure(fig, p)
  legend = _legend_text(fig)
  lazy = [r for r in rows if r['algorithm'] == 'lazy_exact']
  fit = analysis.exponents(analysis.thresholds(lazy, EPS))[0]
  assert f'{_fmt(fit["exponent"])} ± {_fmt(fit["stderr"])}' in legend
  assert 'C(d+2,3)/d' in legend and 'd^2/6' in legend and '3!' not in legend
  ax = fig.axes[0]
  assert set(map(float, DIMS)) <= set(_labelled_ticks(ax.xaxis))
  smallest = min(t['m_star'] for t in analysis.thresholds(lazy, EPS))
  assert ax.get_ylim()[0] < smallest
  assert any(v <= smallest for v in _labelled_ticks(ax.yaxis))


@pytest.mark.parametrize('alg', ['lazy_exact', 'gd'])
def test_rel_error_vs_width(tmp_path, alg):
  rows = tensor_rows()
  p = str(tmp_path / f'rel_error_vs_width_{alg}.png')
  fig = plots.rel_error_vs_width(rows, EPS, p, alg)
  check_figure(fig, p)
  legend = _legend_text(fig)
  assert 'runs stop' in legend and 'success' in legend  # the eps line is the stopping threshold
  m = {t['dim']: t['m_star'] for t in analysis.thresholds(rows, EPS) if t['algorithm'] == alg}
  for d in DIMS:
    assert f'd = {d}: m* = {m[d]}' in legend
  strip = fig.axes[1]  # the fraction of seeds below eps per width
  assert any(np.allclose(line.get_ydata(), 0.5) for line in strip.get_lines())
  ax = fig.axes[0]
  lo, hi = ax.get_ylim()
  assert lo < EPS < hi and EPS in _labelled_ticks(ax.yaxis)


@pytest.mark.parametrize('key', ['rel_error', 'movement'])
def test_by_dim_panels(tmp_path, key):
  rows = tensor_rows()
  p = str(tmp_path / f'{key}.png')
  fig = plots.by_dim_panels(rows, p, key, key, eps=EPS if key == 'rel_error' else None, title=f'{key}, ')
  check_figure(fig, p)
  legend = _legend_text(fig)
  if key == 'rel_error':
    assert 'runs stop' in legend
    titles = ' '.join(ax.get_title() for ax in fig.axes)
    assert 'beyond_lazy 3' in titles
  else:
    assert 'C(d+2,3)/d' in legend


def _alpha_rows():
  rows = []
  for a in (0.1, 1.0, 10.0, 100.0):
    for s in range(3):
      div = a == 0.1
      rows.append({'algorithm': 'gd', 'order': 3, 'dim': 12, 'rank': 3, 'width': 16, 'seed': s, 'alpha': a,
                   'status': 'diverged' if div else 'converged', 'rel_error': None if div else 0.5 / a ** 0.1,
                   'movement': None if div else 1.0 / a, 'linearization_gap': None if div else 2.0 / a})
  for alg in ('lazy', 'lazy_exact'):
    for s in range(3):
      rows.append({'algorithm': alg, 'order': 3, 'dim': 12, 'rank': 3, 'width': 16, 'seed': s, 'alpha': None,
                   'status': 'max_steps', 'rel_error': 0.7, 'movement': 1.0, 'linearization_gap': 1.0})
  return rows


def test_alpha_scaling(tmp_path):
  p = str(tmp_path / 'alpha_scaling.png')
  fig = plots.alpha_scaling(_alpha_rows(), 0.01, p)
  check_figure(fig, p)
  assert 'diverged' in _legend_text(fig)


def test_rank_figures(tmp_path):
  rows = []
  for r in (1, 2, 4):
    for s in range(4):
      for w in (1, 2, 4, 8, 16):
        rel = 0.04 if w >= r + (s % 2) else 0.4
        rows.append({'algorithm': 'gd', 'order': 3, 'dim': 20, 'rank': r, 'width': w, 'seed': s, 'alpha': None,
                     'rel_error': rel, 'status': 'converged'})
  p = str(tmp_path / 'm_star_vs_rank.png')
  fig = plots.m_star_vs_rank(rows, EPS, p)
  check_figure(fig, p)
  fit = analysis.rank_exponents(analysis.thresholds(rows, EPS))[0]
  assert f'{_fmt(fit["exponent"])} ± {_fmt(fit["stderr"])}' in _legend_text(fig)
  assert {1.0, 2.0, 4.0} <= set(_labelled_ticks(fig.axes[0].xaxis))
  p = str(tmp_path / 'success_vs_overparam.png')
  check_figure(plots.success_vs_overparam(rows, EPS, p), p)


def test_deflation(tmp_path):
  rows, cs = [], np.array([1.0, 0.5, 0.25])
  os.makedirs(tmp_path / 'trajectories')
  it = np.arange(0, 1000, 10)
  for s in range(3):
    f = f'trajectories/run{s}.npz'
    fit_at = np.array([50, 200, 600]) * (1 + 0.1 * s)
    aw = cs[None, :] * (it[:, None] >= fit_at[None, :])
    np.savez(tmp_path / f, iteration=it, rel_error=np.maximum(1.0 - aw.sum(1) / cs.sum(), 0.004),
             aligned_weight=aw, target_weight=np.tile(cs, (len(it), 1)))
    rows.append({'algorithm': 'beyond_lazy', 'order': 4, 'dim': 100, 'rank': 3, 'width': 10, 'seed': s,
                 'alpha': None, 'rel_error': 0.004, 'status': 'converged', 'trajectory_file': f})
  p = str(tmp_path / 'deflation.png')
  check_figure(plots.deflation(rows, str(tmp_path), 0.005, p), p)


def _sample_rows():
  rows = []
  for d, lazy_n in ((8, 128), (12, 512), (16, 1024)):
    for s in range(3):
      for n in (32, 64, 128, 256, 512, 1024):
        for alg, w, need in (('lazy_exact', 64, lazy_n), ('gd', 4, 16 * d * (1 + s % 2))):
          ok = n >= need
          rows.append({'algorithm': alg, 'order': 3, 'dim': d, 'rank': 2, 'width': w, 'seed': s, 'alpha': None,
                       'num_samples': n, 'axes': ['num_samples'], 'status': 'converged',
                       'rel_error': (1e-13 if alg == 'lazy_exact' else 0.01) if ok else 0.7,
                       'train_error': 1e-14 if alg == 'lazy_exact' else 0.005})
  return rows


def test_sample_figures(tmp_path):
  rows = _sample_rows()
  paths = plots.sample_figures(rows, EPS, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == ['n_star_vs_dim.png', 'sample_error_vs_n.png',
                                                         'sample_gap_vs_n.png']
  for gap in (False, True):
    p = str(tmp_path / f'e{gap}.png')
    check_figure(plots.sample_error_vs_n(rows, EPS, p, gap=gap), p)
  p = str(tmp_path / 'n_star.png')
  fig = plots.n_star_vs_dim(rows, EPS, p)
  check_figure(fig, p)
  fits = analysis.sample_exponents(analysis.sample_thresholds(rows, EPS))
  legend = _legend_text(fig)
  for f in fits:
    assert f'{_fmt(f["exponent"])} ± {_fmt(f["stderr"])}' in legend
  assert {8.0, 12.0, 16.0} <= set(_labelled_ticks(fig.axes[0].xaxis))
  smallest = min(t['n_star'] for t in analysis.sample_thresholds(rows, EPS) if t['n_star'])
  assert any(v <= smallest for v in _labelled_ticks(fig.axes[0].yaxis))


def test_draw_all_writes_through_one_save(tmp_path, monkeypatch):
  """Every figure goes through plots._save (the one place a later change makes the write atomic)."""
  saved = []
  real = plots._save
  monkeypatch.setattr(plots, '_save', lambda fig, path, *a, **k: (saved.append(path), real(fig, path, *a, **k)))
  paths = plots.draw_all(tensor_rows(), EPS, str(tmp_path))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(['rel_error_vs_width_beyond_lazy.png', 'rel_error_vs_width_gd.png',
                          'rel_error_vs_width_lazy_exact.png', 'lazy_threshold_l3.png', 'rel_error_vs_width.png',
                          'movement_vs_width.png', 'm_star_vs_dim.png'])
  assert sorted(saved) == sorted(paths)
  for p in paths:
    with open(p, 'rb') as f:
      assert f.read(8) == PNG


def test_degenerate_rows_still_draw(tmp_path):
  """Every run diverged (no rel_error, no movement), one seed, a single width per arm: every figure is
  still drawn, with no text outside it."""
  rows = []
  for d in (6, 8):
    for alg, w in (('gd', 3), ('lazy_exact', 10)):
      rows.append({'algorithm': alg, 'order': 3, 'dim': d, 'rank': 3, 'width': w, 'seed': 0, 'alpha': None,
                   'rel_error': None, 'movement': None, 'status': 'diverged', 'linearization_gap': None})
  paths = plots.draw_all(rows, EPS, str(tmp_path))
  assert 'm_star_vs_dim.png' in {os.path.basename(p) for p in paths}
  p = str(tmp_path / 'again.png')
  check_figure(plots.m_star_vs_dim(rows, EPS, p), p)
