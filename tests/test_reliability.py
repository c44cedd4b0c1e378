"""Hostile input, divergence and crashes: every failure is named, nothing is half written."""

import json
import math

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from overparam import config_lib, experiments, memory, results
from overparam.errors import ConfigError

from tests.test_sweep import finish, launch, tiny_config


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


@pytest.mark.parametrize('field, value', BAD, ids=[f'{f}={v!r}' for f, v in BAD])
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


def test_sigkill_at_random_moments_then_resume(tmp_path):
  """Two SIGKILLs at random moments, then a full re-run: one line per cell, equal to an unbroken run."""
  from tools import kill_resume  # noqa: PLC0415 - subprocess-heavy, only this test needs it
  assert kill_resume.main(trials=1, kills=2, seed=1) == 0


def test_config_json_records_versions(tmp_path):
  experiments.run(tiny_config(widths=(2,), num_seeds=1, steps=30), str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    prov = json.load(f)['provenance']
  assert prov['jax'] and prov['jaxlib'] and 'git_revision' in prov


@pytest.mark.parametrize('algorithm', ['gd', 'beyond_lazy', 'lazy', 'lazy_exact'])
def test_memory_refusal_names_the_program_and_what_to_reduce(tmp_path, algorithm):
  rc, err = finish(launch(str(tmp_path / 'w'), f'--config.algorithms=("{algorithm}",)', '--config.memory_gb=1e-7'))
  last = err.strip().splitlines()[-1]
  assert rc == 2 and f'the {algorithm} program for d=6' in last and 'GiB' in last and 'reduce' in last, last
  assert not (tmp_path / 'w').exists()


def test_memory_estimate_grows_with_the_problem():
  c = tiny_config()
  small = memory.program_bytes('gd', c, 6, 4, 2, runs=1)
  assert memory.program_bytes('gd', c, 60, 4, 2, runs=1) > small
  assert memory.program_bytes('gd', c, 6, 4, 2, runs=8) == 8 * small
  c.loss = 'dense'
  assert memory.program_bytes('gd', c, 20, 4, 2, runs=1) > 3 * 4 * 20 ** 3  # three d^l tensors at least
