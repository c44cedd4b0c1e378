"""What a newcomer is told: the end of a run (a compact m* table with fitted exponents, statuses, what
to change when an arm diverged, the paths), the help listing every config field with its default and
meaning, warnings only about fields the user set."""

import os
import subprocess
import sys

import pytest

from overparam import analysis, config_lib, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(alg, dim, width, seed, rel, status=None, rank=3):
  status = status or ('converged' if rel is not None and rel < 0.05 else ('diverged' if rel is None else 'max_steps'))
  return dict(algorithm=alg, order=3, dim=dim, rank=rank, width=width, seed=seed, rel_error=rel, status=status,
              alpha=None)


def test_end_of_run_table_statuses_divergence_and_paths(tmp_path):
  rows = []
  for d, m_good in ((6, 4), (12, 8), (24, 16)):
    for m in (2, 4, 8, 16):
      for s in (0, 1):
        rows.append(row('lazy_exact', d, m, s, 0.01 if m >= m_good else 0.5))
        rows.append(row('beyond_lazy', d, m, s, 0.01 if m >= 4 else 0.3))
        rows.append(row('gd', d, m, s, None))
  summary = analysis.summarize(rows, 0.05)
  (tmp_path / 'figures').mkdir()
  (tmp_path / 'figures' / 'm_star_vs_dim.png').write_bytes(b'png')
  text = report.end_of_run(str(tmp_path), summary, rows, 12.34, {'beyond_lazy': True})
  lines = text.splitlines()
  assert lines[0] == f'overparam: {len(rows)} runs in 12.3 s, workdir {tmp_path}'
  table = {l.split()[0]: l.split() for l in lines if l.startswith('  ')}
  assert table['algorithm'][1:4] == ['d=6', 'd=12', 'd=24']
  assert table['lazy_exact'][1:4] == ['4', '8', '16'] and table['lazy_exact'][4:7] == ['1.00', '+-', '0.00']
  assert table['beyond_lazy'][1:5] == ['4', '4', '4', '0.00']
  assert table['gd'][1:4] == ['>16', '>16', '>16']
  assert f'statuses: converged {sum(r["status"] == "converged" for r in rows)}, diverged 24' in text
  assert any(l.startswith('gd: all 24 runs diverged: lower its step size') for l in lines)
  assert not any(l.startswith('beyond_lazy: all') for l in lines)
  assert lines[-2] == f'summary: {tmp_path}/summary.json'
  assert lines[-1] == f'figures ({tmp_path}/figures): m_star_vs_dim.png'


def test_a_dense_file_of_unknown_rank_is_said():
  rows = [row('gd', 6, 4, 0, 0.01, rank=None)]
  text = report.end_of_run('/nowhere', analysis.summarize(rows, 0.05), rows)
  assert 'unknown rank' in text and '--config.target.rank' in text


def test_every_config_field_has_a_meaning():
  lines = config_lib.field_help()
  fields = [l.strip().split('=')[0][len('--config.'):] for l in lines[::2]]
  assert 'steps' in fields and 'beyond_lazy.lr' in fields and 'target.path' in fields and 'lazy.momentum' in fields
  for name, meaning in zip(fields, lines[1::2]):
    assert len(meaning.strip()) > 15 and not meaning.strip().startswith('['), name


def test_only_fields_the_user_set_are_warned_about():
  c = config_lib.base_config()
  c.lazy.momentum = 0.9           # a config file prepared the sub-dict of an arm not run
  c.beyond_lazy.lr = 0.3          # the user set it on the command line
  assert config_lib.unused_given_fields(c, ['beyond_lazy.lr']) == ['config.beyond_lazy.lr = 0.3']
  assert config_lib.unused_given_fields(c, []) == []


@pytest.mark.slow
def test_helpfull_lists_every_field_with_its_default():
  p = subprocess.run([sys.executable, 'launch.py', '--config=configs/default.py:quick', '--helpfull'], cwd=ROOT,
                     capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  out = p.stdout
  assert 'config fields' in out and 'Traceback' not in p.stderr
  quick = config_lib.base_config()
  for field, _ in config_lib._leaves(quick):  # noqa: SLF001
    assert f'--config.{field}=' in out, field
  assert "--config.steps=2000\n      the step budget of every run" in out  # the quick config's value
  assert "--config.beyond_lazy.lr=0.2\n      beyond_lazy: the step size in normalized units" in out


@pytest.mark.slow
def test_an_arm_that_diverges_ends_with_one_line_and_no_stray_warning(tmp_path):
  """gd on a target of scale 100 diverges in every run: the end of the run says so and what to change,
  and no numpy RuntimeWarning reaches the terminal."""
  p = subprocess.run([sys.executable, '-W', 'error::RuntimeWarning', 'launch.py', '--config=configs/default.py:quick',
                      '--config.algorithms=("gd",)', '--config.target.weights=(100.0,100.0,100.0)',
                      '--config.dims=(6,)', f'--workdir={tmp_path / "wd"}'], cwd=ROOT, capture_output=True, text=True,
                     timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'RuntimeWarning' not in p.stderr
  assert 'gd: all 6 runs diverged: lower its step size' in p.stdout and 'statuses: diverged 6' in p.stdout
  assert len((p.stdout + p.stderr).strip().splitlines()) <= 60
