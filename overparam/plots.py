"""Figures drawn from result rows (matplotlib, Agg, PNG)."""

import collections
import os
from typing import Dict, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def rel_error_vs_width(rows: Sequence[Dict], eps: float, path: str, algorithm: str):
  """Median rel_error across seeds versus width, one line per d, band = min..max; diverged skipped."""
  by_dim = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    if r['algorithm'] == algorithm and r['rel_error'] is not None:
      by_dim[r['dim']][r['width']].append(r['rel_error'])
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for dim in sorted(by_dim):
    ws = sorted(by_dim[dim])
    errs = [np.asarray(by_dim[dim][w]) for w in ws]
    line, = ax.plot(ws, [np.median(e) for e in errs], marker='o', label=f'd = {dim}')
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
  fig.savefig(path, dpi=120)
  plt.close(fig)


def draw_all(rows: Sequence[Dict], eps: float, figures_dir: str):
  """Every figure the rows support, into figures_dir; returns the paths written."""
  os.makedirs(figures_dir, exist_ok=True)
  paths = []
  for alg in sorted({r['algorithm'] for r in rows}):
    p = os.path.join(figures_dir, f'rel_error_vs_width_{alg}.png')
    rel_error_vs_width(rows, eps, p, alg)
    paths.append(p)
  return paths
