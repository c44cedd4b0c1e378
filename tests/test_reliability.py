"""Hostile input, divergence and crashes: every failure is named, nothing is half written."""

import json
import math
import os
import re

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from overparam import config_lib, experiments, memory, metrics, registry, results
from overparam.errors import ConfigError

from tests.support import finish, launch, tiny_config


def _set(c, path, value):
  node = c
  *parents, leaf = path.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value


BAD = [
    ('order', 1), ('dims', (0, 4)), ('dims', ()), ('widths', (3, -1)), ('rank', 0),
    ('num_seeds', 0), ('steps', 0), ('chunk_steps', 0), ('seed', -1), ('lr', -1.0), ('lr', math.nan),
    ('lr', 0.0), ('eps', math.inf), ('eps', 0.0), ('init_scale', 0.0), ('init_scale', -math.inf),
    ('reg', -0.1), ('alpha', 0.0), ('target.kind', 'gaussian'), ('parametrization', 'tucker'),
    ('optimizer', 'lbfgs'), ('algorithms', ('gd', 'sgd')), ('algorithms', ()), ('loss', 'l1'),
    ('signs', 'negative'), ('target.noise', -0.5), ('target.weights', (1.0,)),
    ('target.weights', (1.0, math.nan)), ('trace_every', 7), ('checkpoint_every_s', -1.0),
]


BAD_RANGES = [
    ('eps', 1.0), ('eps', 1.5), ('seed', 2 ** 32), ('seed', 2 ** 40), ('seed', 2 ** 64), ('num_seeds', 2 ** 32 + 1),
    ('steps', 2 ** 31), ('chunk_steps', 2 ** 31), ('target.path', '/no/such/file.npy'), ('dims', (6, 6)),
    ('widths', (2, 3, 2)), ('alphas', (1.0, 1.0)), ('target.coherence', 0.5), ('target.weights', (0.0, 0.0)),
]


@pytest.mark.parametrize('field, value', BAD + BAD_RANGES, ids=[f'{f}={v!r}' for f, v in BAD + BAD_RANGES])
def test_bad_field_is_named(field, value):
  c = tiny_config()
  with c.unlocked():
    _set(c, field, value)
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert f'config.{field}' in msg and '\n' not in msg, msg


@pytest.mark.parametrize('kind, rank, dims, coherence, field', [
    ('orthonormal', 7, (6,), 0.0, 'config.rank'),
    ('coherent', 6, (6,), 0.3, 'config.rank'),
    ('coherent', 2, (6,), 1.0, 'config.target.coherence'),
])
def test_target_shape_constraints(kind, rank, dims, coherence, field):
  c = tiny_config(rank=rank, dims=dims)
  c.target.kind, c.target.coherence = kind, coherence
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    config_lib.validate(c)


@settings(max_examples=150, deadline=None)
@given(order=st.integers(-3, 8), rank=st.integers(-2, 12), dim=st.integers(-2, 12),
       lr=st.floats(allow_nan=True, allow_infinity=True), eps=st.floats(allow_nan=True, allow_infinity=True),
       steps=st.integers(-5, 10 ** 6), trace=st.integers(-3, 300),
       kind=st.sampled_from(['random_unit', 'orthonormal', 'coherent', 'file', 'bogus']))
def test_validate_accepts_or_names_a_field(order, rank, dim, lr, eps, steps, trace, kind):
  """validate never crashes: it accepts exactly the in-range configs, or names a config field."""
  c = tiny_config(order=order, rank=rank, dims=(dim,), lr=lr, eps=eps, steps=steps, trace_every=trace)
  c.target.kind = kind
  try:
    config_lib.validate(c)
  except ConfigError as e:
    assert 'config.' in str(e) and '\n' not in str(e)
    return
  assert order >= 2 and rank >= 1 and dim >= 1 and steps >= 1
  assert math.isfinite(lr) and lr > 0 and math.isfinite(eps) and eps > 0
  assert trace >= 0 and (trace == 0 or min(steps, c.chunk_steps) % trace == 0)
  assert kind != 'bogus' and not (kind == 'orthonormal' and rank > dim)


def test_workdir_that_cannot_be_written(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  with pytest.raises(results.WorkdirError, match='--workdir'):
    experiments.run(tiny_config(), str(blocker / 'sub'))


@pytest.mark.slow
def test_divergence_completes_the_sweep_and_is_counted(tmp_path):
  c = tiny_config(lr=1e3, widths=(2, 3), steps=60)
  summary = experiments.run(c, str(tmp_path))
  rows = results.Workdir(str(tmp_path)).load_results()
  assert len(rows) == 4 and all(r['status'] == 'diverged' and r['rel_error'] is None for r in rows)
  assert summary['status_counts'] == {'diverged': 4}
  assert all(t['m_star'] is None for t in summary['thresholds'])
  with open(tmp_path / 'results.jsonl') as f:
    assert 'NaN' not in f.read()  # strict JSON: a diverged number is null, never NaN


@pytest.mark.parametrize('content, match', [
    (None, 'no such file'),
    (b'garbage', 'cannot read'),
    (np.ones((6, 6)), 'order 2'),
    (np.arange(216.0).reshape(6, 6, 6), 'not symmetric'),
])
@pytest.mark.slow
def test_bad_target_file_on_the_command_line(tmp_path, content, match):
  path = tmp_path / 'target.npy'
  if isinstance(content, bytes):
    path.write_bytes(content)
  elif content is not None:
    np.save(path, content)
  wd = tmp_path / 'w'
  rc, err = finish(launch(str(wd), '--config.target.kind=file', f'--config.target.path={path}',
                          '--config.loss=dense'))  # launch() passes --config.dims=(6,)
  last = err.strip().splitlines()[-1]
  assert rc == 2 and last.startswith('error: config.target.path') and match in last, last
  assert not (wd / 'results.jsonl').exists()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
  """A SIGKILL at a random moment and one while finishing, then re-runs: one line per cell, equal
  to an unbroken run."""
  from tools import kill_resume  # noqa: PLC0415 - subprocess-heavy, only this test needs it
  assert kill_resume.main(trials=1, kills=1, seed=1, finish_trials=1) == 0


def test_config_json_records_versions(tmp_path):
  experiments.run(tiny_config(widths=(2,), num_seeds=1, steps=30), str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    prov = json.load(f)['provenance']
  assert prov['jax'] and prov['jaxlib'] and 'git_revision' in prov


@pytest.mark.slow
@pytest.mark.parametrize('algorithm', ['gd', 'beyond_lazy', 'lazy', 'lazy_exact'])
def test_memory_refusal_names_the_program_and_what_to_reduce(tmp_path, algorithm):
  rc, err = finish(launch(str(tmp_path / 'w'), f'--config.algorithms=("{algorithm}",)', '--config.memory_gb=1e-7'))
  last = err.strip().splitlines()[-1]
  assert rc == 2 and f'the {algorithm} program for d=6' in last and 'GiB' in last and 'reduce' in last, last
  assert not (tmp_path / 'w').exists()


def test_memory_estimate_grows_with_the_problem():
  c = tiny_config()
  spec, alg = registry.get('gd'), config_lib.algorithm_of(c, 'gd')
  task = config_lib.task_of(c)
  small = memory.program_bytes(spec, alg, task, 6, 4, 2, 1, 4)
  assert memory.program_bytes(spec, alg, task, 60, 4, 2, 1, 4) > small
  assert memory.program_bytes(spec, alg, task, 6, 4, 2, 8, 4) == 8 * small
  c.loss = 'dense'
  task = config_lib.task_of(c)
  assert memory.program_bytes(spec, alg, task, 20, 4, 2, 1, 4) > 3 * 4 * 20 ** 3  # three d^l tensors at least


# ---- issue 11: values that mean nothing, zero and extreme targets, status against numbers ---------





@pytest.mark.parametrize('field, value', [('lr', 0.1), ('reg', 0.1), ('alpha', 2.0), ('alphas', (1.0, 2.0)),
                                          ('init_scale', 0.1), ('parametrization', 'homogeneous')])
def test_a_field_set_but_unused_is_refused(field, value):
  c = tiny_config(algorithms=('beyond_lazy',))
  config_lib.validate(c)
  c[field] = value
  with pytest.raises(ConfigError, match=rf'config\.{field} is set to .* but unused'):
    config_lib.validate(c)


def test_every_config_validates():
  import glob  # noqa: PLC0415
  import importlib.util  # noqa: PLC0415
  for path in glob.glob(os.path.join(os.path.dirname(__file__), '..', 'configs', '*.py')):
    spec = importlib.util.spec_from_file_location('cfg', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config_lib.validate(mod.get_config())


def test_range_table_covers_every_base_field():
  flat = set()
  for k, v in config_lib.base_config().items():
    if registry.find(k) is not None:
      continue  # algorithm sub-configs have their own validators
    if k == 'algorithm_widths':
      flat.add('algorithm_widths.NAME')
    elif k in ('optimizer_kwargs', 'schedule_kwargs'):  # free-form argument dicts
      flat.add(k)
    elif hasattr(v, 'keys'):
      flat |= {f'{k}.{s}' for s in v.keys()}
    else:
      flat.add(k)
  assert flat == set(config_lib.BASE_FIELD_RANGES)


@pytest.mark.parametrize('kind', ['npy_zero', 'npz_cancelling'])
def test_zero_target_is_an_error_naming_it(tmp_path, kind):
  from overparam.errors import TargetError  # noqa: PLC0415
  c = tiny_config(widths=(2,), num_seeds=1, steps=30, dims=(4,), rank=2)
  with c.unlocked():
    c.target.kind = 'file'
    if kind == 'npy_zero':
      c.target.path = str(tmp_path / 't.npy')
      np.save(c.target.path, np.zeros((4, 4, 4)))
      c.loss = 'dense'
    else:
      c.target.path = str(tmp_path / 't.npz')
      a = np.eye(4)[:1]
      np.savez(c.target.path, coeffs=np.array([1.0, -1.0]), factors=np.concatenate([a, a]))
  with pytest.raises(TargetError, match=r'config\.target\.path .*(zero|all 0)'):
    experiments.run(c, str(tmp_path / 'wd'))
  assert not (tmp_path / 'wd').exists()


@pytest.mark.slow
def test_scale_free_algorithm_trains_alike_at_any_scale(tmp_path):
  """beyond_lazy fits T*/||T*||: weights scaled by 1e20 or 1e-20 (float32) give the same run."""
  got = []
  for w in (1.0, 1e20, 1e-20):
    c = tiny_config(algorithms=('beyond_lazy',), widths=(3,), num_seeds=1, steps=200, chunk_steps=100, dims=(4,))
    c.target.weights = (w, 0.5 * w)
    experiments.run(c, str(tmp_path / f'w{w:g}'))
    (r,) = results.Workdir(str(tmp_path / f'w{w:g}')).load_results()
    got.append(r)
  for r in got:
    assert r['status'] == got[0]['status'] != 'diverged' and r['steps'] == got[0]['steps']
    assert r['rel_error'] == pytest.approx(got[0]['rel_error'], rel=1e-4)
  assert got[1]['aligned_weight'][0] == pytest.approx(1e20 * got[0]['aligned_weight'][0], rel=1e-4)


def test_unrepresentable_target_for_a_scaled_algorithm_names_x64(tmp_path):
  from overparam.errors import TargetError  # noqa: PLC0415
  c = tiny_config(widths=(2,), num_seeds=1, steps=30)
  c.target.weights = (1e20, 1e20)
  with pytest.raises(TargetError, match=r'config\.target .*x64'):
    experiments.run(c, str(tmp_path / 'wd'))
  assert not (tmp_path / 'wd').exists()


@pytest.mark.slow
def test_status_agrees_with_float64_rel_error(tmp_path, caplog):
  """float32 at eps 5e-4: a run the in-loop test stops as converged with float64 rel_error >= eps is
  continued with a tighter threshold; every row's status agrees with its rel_error, and so does m*."""
  eps = 5e-4
  c = tiny_config(dims=(4,), widths=(3, 4), num_seeds=2, steps=3000, chunk_steps=500, eps=eps, lr=0.1)
  with caplog.at_level('INFO'):
    summary = experiments.run(c, str(tmp_path))
  assert 'continuing them with their in-loop threshold' in caplog.text  # the case is exercised
  rows = results.Workdir(str(tmp_path)).load_results()
  for r in rows:
    assert (r['status'] == 'converged') == (r['rel_error'] is not None and r['rel_error'] < eps), r
  for t in summary['thresholds']:
    ok = {w: sum(r['status'] == 'converged' for r in rows if r['width'] == w) for w in (3, 4)}
    expect = next((w for w in (3, 4) if 2 * ok[w] >= 2), None)
    assert t['m_star'] == expect


def test_recovered_fraction_ignores_components_of_weight_zero():
  a = np.eye(3)
  got = metrics.recovery(np.array([1.0]), a[:1], np.array([1.0, 0.0]), a[:2], 3)
  assert got['recovered_fraction'] == 1.0
  assert metrics.recovery(np.array([1.0]), a[:1], np.array([1.0, 2.0]), a[:2], 3)['recovered_fraction'] == 0.5


def test_readme_range_table_is_the_validator_table():
  """README's table of accepted ranges is config_lib.BASE_FIELD_RANGES, entry for entry."""
  with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')) as f:
    text = f.read()
  table = text[text.index('| field | accepted |'):]
  table = table[:table.index('\n\n')]
  got = dict(re.findall(r'^\| `([^`]+)` \| (.*) \|$', table, flags=re.M))
  assert got == config_lib.BASE_FIELD_RANGES
