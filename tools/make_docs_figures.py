r"""Regenerates the figures of docs/RESULTS.md from finished workdirs, and prints its tables.

  python -m tools.make_docs_figures --default=/tmp/wd/default --alpha_scaling=/tmp/wd/alpha_scaling \
      --deflation=/tmp/wd/deflation

Each workdir is the output of `python launch.py --config=configs/NAME.py --workdir=DIR` (the
commands are in docs/RESULTS.md). Figures are redrawn from the workdir's results.jsonl exactly as
`launch.py --workdir=DIR --plot_only` does (nothing is recomputed), then copied to docs/figures/ under
the names RESULTS.md uses; a figure over 200 KB is an error and is not copied. With --default,
prints the markdown tables of m* per (algorithm, d), the per-seed threshold spread and the fitted
exponents.
"""

import argparse
import collections
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from overparam import analysis, experiments, results  # noqa: E402

# workdir flag -> [(figure in WORKDIR/figures, name in docs/figures)]
FIGURES = {
    'default': [('m_star_vs_dim.png', 'lazy_vs_rich_m_star.png'),
                ('rel_error_vs_width.png', 'lazy_vs_rich_rel_error.png'),
                ('movement_vs_width.png', 'lazy_vs_rich_movement.png'),
                ('lazy_threshold_l3.png', 'lazy_threshold_l3.png')],
    'alpha_scaling': [('alpha_scaling.png', 'alpha_scaling.png')],
    'deflation': [('deflation.png', 'deflation.png')],
    'network': [('n_star_vs_dim.png', 'network_n_star.png'), ('sample_error_vs_n.png', 'network_error_vs_n.png'),
                ('sample_gap_vs_n.png', 'network_gap.png')],
    'lazy_threshold_l4': [('lazy_threshold_l4.png', 'lazy_threshold_l4.png')],
}
MAX_BYTES = 200 * 1024


def _num(v: float) -> str:
  """Two decimals, never '-0.00' (a flat m*(d) fits an exponent of -1e-17)."""
  s = f'{v:.2f}'
  return s.lstrip('-') if float(s) == 0 else s


def tables(workdir: str) -> str:
  with open(os.path.join(workdir, 'config.json')) as f:
    eps = json.load(f)['eps']
  rows = results.Workdir(workdir).load_results()
  ths = analysis.thresholds(rows, eps)
  seeds = {(t['algorithm'], t['dim']): t['seed_m_star'] for t in analysis.seed_thresholds(rows, eps)}
  algs = list(dict.fromkeys(t['algorithm'] for t in ths))
  dims = sorted({t['dim'] for t in ths})
  m = {(t['algorithm'], t['dim']): t['m_star'] for t in ths}
  out = [f'm* (eps = {eps:g}; in brackets: per-seed thresholds min..max, ">" = some seed never reached eps)', '',
         '| d | ' + ' | '.join(algs) + ' |', '|---|' + '---|' * len(algs)]
  for d in dims:
    cells = []
    for a in algs:
      ps = list(seeds.get((a, d), {}).values())
      got = [p for p in ps if p is not None]
      rng = f' [{min(got)}..{max(got)}{">" if len(got) < len(ps) else ""}]' if got else ''
      cells.append(f'{m.get((a, d))}{rng}')
    out.append(f'| {d} | ' + ' | '.join(cells) + ' |')
  rank = analysis.tangent_rank_thresholds(rows)
  if rank:
    out += ['', '| d | tangent-rank m* | dimension count C(d+l-1,l)/d |', '|---|---|---|']
    out += [f'| {t["dim"]} | {t["rank_m_star"]} | {t["dimension_count"]:.1f} |' for t in rank]
  fits = {e['algorithm']: e for e in analysis.exponents(ths)}
  boot = {e['algorithm']: e for e in analysis.bootstrap_exponents(rows, eps)}
  out += ['', 'exponent of m* versus d (least squares on log-log; 90% interval: bootstrap over seeds, 1000 draws)',
          '', '| algorithm | exponent | stderr (fit) | bootstrap std | 90% interval |', '|---|---|---|---|---|']
  for a in algs:
    f, b = fits.get(a), boot.get(a)
    if f is None:
      continue
    se = _num(f['stderr']) if f['stderr'] is not None else '-'
    bs = _num(b['bootstrap_std']) if b else '-'
    iv = f'[{_num(b["interval"][0])}, {_num(b["interval"][1])}]' if b else '-'
    out.append(f'| {a} | {_num(f["exponent"])} | {se} | {bs} | {iv} |')
  status = collections.Counter((r['algorithm'], r['status']) for r in rows)
  out += ['', 'runs by status: ' + ', '.join(f'{a} {s}: {n}' for (a, s), n in sorted(status.items()))]
  return '\n'.join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name in FIGURES:
    p.add_argument(f'--{name}', help=f'workdir of configs/{name}.py')
  p.add_argument('--out', default=os.path.join(ROOT, 'docs', 'figures'))
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  status = 0
  for name, figs in FIGURES.items():
    wd = getattr(args, name)
    if not wd:
      continue
    experiments.plot_only(wd)
    for src, dst in figs:
      path = os.path.join(wd, 'figures', src)
      if not os.path.exists(path):
        print(f'error: {path} was not drawn', file=sys.stderr)
        status = 1
        continue
      size = os.path.getsize(path)
      if size > MAX_BYTES:  # refused before the copy: docs/figures keeps its previous file
        print(f'error: {dst} is {size // 1024} KB > 200 KB; not copied', file=sys.stderr)
        status = 1
        continue
      shutil.copyfile(path, os.path.join(args.out, dst))
      print(f'{dst}: {size // 1024} KB')
  if args.default:
    print(tables(args.default))
  return status


if __name__ == '__main__':
  sys.exit(main())
