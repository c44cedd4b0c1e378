"""The lazy-versus-rich main job: the default config shrunk and run end to end (every file of the
workdir contract), --plot_only on the finished workdir, and the threshold / exponent / bootstrap
functions against hand-made rows."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from overparam import analysis, config_lib, experiments, registry, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def shrunken_default():
  """configs/default.py with 2 dims, 2 seeds, 3 widths and a short budget, plus `lazy` (off by default)."""
  c = load_config('default').get_config()
  c.algorithms = ('lazy_exact', 'lazy', 'beyond_lazy', 'gd')
  c.dims, c.num_seeds, c.widths, c.steps, c.chunk_steps = (4, 5), 2, (2, 4), 400, 200  # one program per arm and d
  c.algorithm_widths.lazy_exact = c.algorithm_widths.lazy = (4, 8)
  return c


@pytest.fixture(scope='module')
def default_workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('default'))
  c = shrunken_default()
  summary = experiments.run(c, wd)
  return c, wd, summary


@pytest.mark.slow
def test_shrunken_default_writes_the_whole_contract(default_workdir):
  c, wd, summary = default_workdir
  assert set(c.algorithms) == set(registry.names())
  with open(os.path.join(wd, 'config.json')) as f:
    assert json.load(f)['algorithms'] == list(c.algorithms)
  rows = results.Workdir(wd).load_results()
  assert len(rows) == 4 * 2 * 2 * 2  # arms x widths x dims x seeds
  for r in rows:
    for k in ('algorithm', 'order', 'dim', 'rank', 'width', 'seed', 'rel_error', 'status', 'steps', 'movement',
              'recovered_fraction', 'params_file', 'wall_s'):
      assert k in r, k
    assert r['status'] in ('converged', 'max_steps', 'diverged')
    if r['algorithm'] in ('lazy', 'lazy_exact'):
      assert r['params_file'] is None  # the lazy model is not a CP tensor
    else:
      assert r['params_file'] and r['recovered_fraction'] is not None
      with np.load(os.path.join(wd, r['params_file'])) as z:
        assert z['coeffs'].shape == (r['width'],) and z['factors'].shape == (r['width'], r['dim'])
  with open(os.path.join(wd, 'summary.json')) as f:
    s = json.load(f)
  assert s == json.loads(json.dumps(summary))
  assert {(t['algorithm'], t['dim']) for t in s['thresholds']} == {(a, d) for a in c.algorithms for d in c.dims}
  assert {e['algorithm'] for e in s['exponents'] if e['quantity'] == 'm_star'} <= set(c.algorithms)
  assert 'exponent_bootstrap' in s and 'seed_thresholds' in s
  figs = set(os.listdir(os.path.join(wd, 'figures')))
  assert {'m_star_vs_dim.png', 'rel_error_vs_width.png', 'movement_vs_width.png', 'lazy_threshold_l3.png'} <= figs


@pytest.mark.slow
def test_plot_only_redraws_the_same_files_without_computing(default_workdir):
  _, wd, _ = default_workdir
  fig_dir = os.path.join(wd, 'figures')
  before = sorted(os.listdir(fig_dir))
  results_before = open(os.path.join(wd, 'results.jsonl')).read()
  for f in before:
    os.remove(os.path.join(fig_dir, f))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  p = subprocess.run([sys.executable, 'launch.py', f'--workdir={wd}', '--plot_only'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  assert sorted(os.listdir(fig_dir)) == before
  assert open(os.path.join(wd, 'results.jsonl')).read() == results_before


@pytest.mark.slow
def test_plot_only_on_a_non_workdir_is_one_error_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  p = subprocess.run([sys.executable, 'launch.py', f'--workdir={tmp_path}', '--plot_only'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 2
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith('error: --workdir') and 'config.json' in last and 'Traceback' not in p.stderr


@pytest.mark.parametrize('name', ['default', 'lazy_vs_rich', 'lazy_vs_rich_l4'])
def test_lazy_vs_rich_configs_validate(name):
  mod = load_config(name)
  c = mod.get_config()
  c.memory_gb = 1e6  # the GPU configs are sized for a GPU's memory, not this machine's
  config_lib.validate(c)
  assert {'lazy_exact', 'beyond_lazy', 'gd'} <= set(c.algorithms)
  assert len(c.dims) >= 4 and c.num_seeds >= 4
  assert f'python launch.py --config=configs/{name}.py' in mod.__doc__ and 'Expected run time' in mod.__doc__
  # widths reach past the lazy dimension count C(d+l-1, l)/d at the largest d
  d, l = max(c.dims), c.order
  assert max(config_lib.widths_of(c, 'lazy_exact')) >= math.comb(d + l - 1, l) / d


# ---------------------------------------------------------------- thresholds and exponents by hand

def hand_rows(thresholds_by_seed, widths, algorithm='a'):
  """Rows where seed s at dim d succeeds exactly at widths >= thresholds_by_seed[d][s]."""
  rows = []
  for d, ths in thresholds_by_seed.items():
    for s, th in enumerate(ths):
      for w in widths:
        ok = th is not None and w >= th
        rows.append({'algorithm': algorithm, 'order': 3, 'dim': d, 'rank': 2, 'width': w, 'seed': s,
                     'rel_error': 0.01 if ok else (None if w == widths[0] else 0.5), 'status': 'x'})
  return rows


def test_m_star_is_the_half_seeds_rule():
  rows = hand_rows({10: [4, 8, 8, None]}, (2, 4, 8, 16))
  assert analysis.m_star(rows, 0.05) == 8  # 3 of 4 at 8; 1 of 4 at 4; a never-succeeding seed counts as failed
  rows = hand_rows({10: [4, 4, 16, None]}, (2, 4, 8, 16))
  assert analysis.m_star(rows, 0.05) == 4  # 2 of 4 is half
  assert analysis.m_star(hand_rows({10: [None, None]}, (2, 4)), 0.05) is None


def test_fit_power_law_exact_and_noisy():
  d = np.array([5.0, 10.0, 20.0, 40.0])
  fit = analysis.fit_power_law(d, 0.5 * d ** 2)
  assert fit['exponent'] == pytest.approx(2.0, abs=1e-12) and fit['prefactor'] == pytest.approx(0.5)
  assert fit['stderr'] == pytest.approx(0.0, abs=1e-12) and fit['points'] == 4
  y = 3.0 * d ** 1.5 * np.array([1.1, 0.9, 1.05, 0.97])
  fit = analysis.fit_power_law(d, y)
  lx, ly = np.log(d), np.log(y)
  a, b = np.polyfit(lx, ly, 1)
  se = np.sqrt(np.sum((ly - a * lx - b) ** 2) / 2 / np.sum((lx - lx.mean()) ** 2))
  assert fit['exponent'] == pytest.approx(a) and fit['stderr'] == pytest.approx(se)
  assert analysis.fit_power_law([4, 4], [1, 2]) is None


def test_seed_thresholds_and_exponents_by_hand():
  widths = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
  lazy = {4: [6, 6, 8, 6], 8: [16, 16, 16, 24], 16: [48, 64, 48, 48]}
  rich = {4: [3, 3, 4, 3], 8: [3, 4, 3, 3], 16: [3, 3, 3, None]}
  rows = hand_rows(lazy, widths, 'lazy_exact') + hand_rows(rich, widths, 'gd')
  st = {(t['algorithm'], t['dim']): t['seed_m_star'] for t in analysis.seed_thresholds(rows, 0.05)}
  assert st[('lazy_exact', 8)] == {0: 16, 1: 16, 2: 16, 3: 24}
  assert st[('gd', 16)] == {0: 3, 1: 3, 2: 3, 3: None}
  ths = {(t['algorithm'], t['dim']): t['m_star'] for t in analysis.thresholds(rows, 0.05)}
  assert [ths[('lazy_exact', d)] for d in (4, 8, 16)] == [6, 16, 48]
  assert [ths[('gd', d)] for d in (4, 8, 16)] == [3, 3, 3]
  exps = {e['algorithm']: e for e in analysis.exponents(analysis.thresholds(rows, 0.05))}
  assert exps['lazy_exact']['exponent'] == pytest.approx(np.polyfit(np.log([4, 8, 16]), np.log([6, 16, 48]), 1)[0])
  assert exps['gd']['exponent'] == pytest.approx(0.0, abs=1e-12)
  boot = {e['algorithm']: e for e in analysis.bootstrap_exponents(rows, 0.05, samples=400, seed=1)}
  b = boot['lazy_exact']
  assert b['exponent'] == pytest.approx(exps['lazy_exact']['exponent'])
  assert b['interval'][0] <= b['exponent'] <= b['interval'][1] and b['interval'][1] - b['interval'][0] > 0
  assert 1.2 < b['interval'][0] and b['interval'][1] < 2.2 and b['seeds'] == 4 and b['fitted_samples'] == 400
  # gd: m* = 3 in every resample except where the draw is mostly the slow seeds (4 at d = 4)
  lo, hi = boot['gd']['interval']
  assert abs(boot['gd']['exponent']) < 1e-12 and -0.3 < lo < 1e-12 and -1e-12 < hi < 0.3
  # identical seeds: no spread
  same = hand_rows({4: [6] * 3, 8: [16] * 3}, widths)
  b = analysis.bootstrap_exponents(same, 0.05, samples=50)[0]
  assert b['bootstrap_std'] == pytest.approx(0.0, abs=1e-12) and b['interval'][0] == pytest.approx(b['interval'][1])
  s = analysis.summarize(rows, 0.05)
  assert {e['algorithm'] for e in s['exponent_bootstrap']} == {'lazy_exact', 'gd'}
  json.dumps(s, allow_nan=False)
