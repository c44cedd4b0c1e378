"""Generic cell axes (config.axes): an axis sweep equals separate runs at each value, config.ranks and
config.alphas equal their config.axes spelling, and the spelling and field checks."""

import json
import os

import pytest

from overparam import analysis, config_lib, experiments, planner, results
from overparam.errors import ConfigError
from tests.support import load_rows

# Fields that depend on the program a run was in (its wall time, its batch), not on the run.
PROGRAM_FIELDS = ('wall_s', 'batch_runs', 'bucket', 'config_fp')  # config_fp: of the config, which differs by design


def tiny(**kw):
  c = config_lib.base_config()
  c.algorithms = ('gd', 'beyond_lazy')
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (4,), 2, (2, 3), 2
  c.steps, c.chunk_steps, c.eps, c.x64 = 60, 30, 0.05, True
  c.checkpoint_every_s = 0.0
  for k, v in kw.items():
    c[k] = v
  return c


def strip(row, drop=()):
  return {k: v for k, v in row.items() if k not in PROGRAM_FIELDS + tuple(drop)}


@pytest.mark.slow
def test_axis_sweep_equals_separate_runs(tmp_path):
  """axes=('lr=a,b', 'beyond_lazy.init_scale=x,y'): gd rows at lr=a equal a plain run with lr=a
  (beyond_lazy's at init_scale=x likewise); rows carry the values; files are unique per value."""
  c = tiny(axes=('lr=0.02,0.05', 'beyond_lazy.init_scale=1e-3,1e-2'))
  wd = str(tmp_path / 'axes')
  summary = experiments.run(c, wd)
  rows = load_rows(wd)
  assert len(rows) == 2 * 2 * 2 + 2 * 2 * 2  # gd: 2 lr x widths x seeds; beyond_lazy: 2 init_scale x ...
  assert len({results.cell_id(r) for r in rows}) == len(rows)
  assert len({r['params_file'] for r in rows}) == len(rows)
  for r in rows:
    assert r['axes'] == ['lr', 'beyond_lazy.init_scale']
    if r['algorithm'] == 'gd':
      assert r['lr'] in (0.02, 0.05) and r['beyond_lazy.init_scale'] is None and r['alpha'] == 1.0
    else:
      assert r['lr'] is None and r['beyond_lazy.init_scale'] in (1e-3, 1e-2) and r['alpha'] is None
  for field, value, alg in (('lr', 0.05, 'gd'), ('beyond_lazy.init_scale', 1e-2, 'beyond_lazy')):
    single = config_lib.with_values(tiny(algorithms=(alg,)), {field: value})
    assert config_lib.get_field(single, field) == value
    swd = str(tmp_path / alg)
    experiments.run(single, swd)
    alone = {(r['width'], r['seed']): r for r in load_rows(swd)}
    swept = {(r['width'], r['seed']): r for r in rows if r['algorithm'] == alg and r[field] == value}
    assert alone.keys() == swept.keys()
    for k in alone:
      assert strip(swept[k], ('axes', 'lr', 'beyond_lazy.init_scale', 'params_file')) == \
          strip(alone[k], ('params_file',)), k
  # m* and the fits are per axis value
  ths = [t for t in summary['thresholds'] if t['algorithm'] == 'gd']
  assert sorted(t['lr'] for t in ths) == [0.02, 0.05]
  assert summary == json.loads(json.dumps(analysis.summarize(rows, c.eps)))
  # a finished sweep computes nothing new
  experiments.run(c, wd)
  assert len(load_rows(wd)) == len(rows)


def _rows(c, wd):
  experiments.run(c, wd)
  with open(os.path.join(wd, 'summary.json')) as f:
    return load_rows(wd), json.load(f)


@pytest.mark.slow
def test_ranks_and_rank_axis_give_identical_rows(tmp_path):
  a, sa = _rows(tiny(algorithms=('gd',), ranks=(1, 2)), str(tmp_path / 'ranks'))
  b, sb = _rows(tiny(algorithms=('gd',), axes=('rank=1,2',)), str(tmp_path / 'axes'))
  assert [strip(r) for r in a] == [strip(r) for r in b]
  assert {r['rank'] for r in a} == {1, 2} and 'axes' not in a[0]
  assert any('_r1_' in r['params_file'] for r in a)
  assert sa.keys() == sb.keys() and sa['thresholds'] == sb['thresholds']


@pytest.mark.slow
def test_alphas_and_alpha_axis_give_identical_rows(tmp_path):
  kw = dict(algorithms=('gd', 'lazy_exact'), init_scale=1.0, lr=0.02)
  a, sa = _rows(tiny(alphas=(1.0, 10.0), **kw), str(tmp_path / 'alphas'))
  b, sb = _rows(tiny(axes=('alpha=1.0,10.0',), **kw), str(tmp_path / 'axes'))
  assert [strip(r) for r in a] == [strip(r) for r in b]
  assert {r['alpha'] for r in a if r['algorithm'] == 'gd'} == {1.0, 10.0}
  assert {r['alpha'] for r in a if r['algorithm'] == 'lazy_exact'} == {None}
  assert len([r for r in a if r['algorithm'] == 'lazy_exact']) == 4  # not multiplied by the alpha axis
  assert sa == sb


@pytest.mark.parametrize('axes, match', [
    (('lr',), "'field=v1,v2,...'"),
    (('lrr=0.1,0.2',), "no field 'lrr'"),
    (('parametrization=1,2',), 'config.parametrization is not a number'),
    (('seed=1,2',), 'config.seed cannot be a cell axis'),
    (('eps=0.1,0.2',), 'config.eps cannot be a cell axis'),
    (('steps=10,20',), 'config.steps cannot be a cell axis'),
    (('lr=0.1,abc',), 'must be numbers'),
    (('lr=0.1,0.1',), 'duplicate'),
    (('lr=0.1,-1.0',), 'config.lr must be a finite number > 0'),
    (('rank=1.5,2',), 'config.axes: rank=1.5'),
    (('lazy.lr_scale=0.5,1.0',), 'no algorithm in config.algorithms uses lazy.lr_scale'),
    (('alpha=1.0,2.0',), 'no algorithm in config.algorithms uses alpha'),
])
def test_bad_axes_are_config_errors(axes, match):
  with pytest.raises(ConfigError, match=match) as e:
    config_lib.validate(tiny(axes=axes, algorithms=('beyond_lazy',) if 'alpha=' in axes[0] else ('gd', 'beyond_lazy')))
  assert '\n' not in str(e.value)


def test_axis_twice_is_refused():
  with pytest.raises(ConfigError, match='also given as config.ranks'):
    config_lib.validate(tiny(ranks=(1, 2), axes=('rank=1,2',)))


def test_memory_check_accounts_for_axes():
  """Each axis value is its own program, checked with its own config: a rank axis's largest rank
  sets the implicit loss's peak."""
  c = tiny(algorithms=('gd',), rank=1, axes=('rank=1,2',))
  progs = planner.plan(c)
  assert [p.configs[0].rank for p in progs] == [1, 2]  # a common axis: separate target sets
  big = planner.program_bytes(progs[1], 4, 8)
  assert big > planner.program_bytes(progs[0], 4, 8)
  c.memory_gb = 0.999 * big / 2 ** 30
  with pytest.raises(ConfigError, match='the gd program for d=4'):
    planner.check_memory(c, progs)
  c.memory_gb = big / 2 ** 30
  planner.check_memory(c, progs)


def test_cell_id_distinguishes_axis_values():
  base = dict(algorithm='gd', order=3, dim=4, rank=2, width=2, seed=0, alpha=1.0)
  assert results.cell_id(base) == tuple(base[k] for k in results.CELL_KEYS)
  a = results.cell_id({**base, 'axes': ['lr'], 'lr': 0.1})
  b = results.cell_id({**base, 'axes': ['lr'], 'lr': 0.2})
  assert a != b and a[:len(results.CELL_KEYS)] == results.cell_id(base)
