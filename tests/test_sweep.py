"""The sweep engine: padding exactness, device/process independence, resume, divergence, CLI errors."""

import json
import os
import socket

import numpy as np
import pytest

from overparam import config_lib, core, engine, experiments, planner, results, rows, targets
from tests.support import finish, launch, load_rows, tiny_config

NUMERIC = ('rel_error', 'steps', 'movement', 'status', 'recovered_fraction', 'max_cos')


def rows_by_cell(rows):
  return {(r['algorithm'], r['dim'], r['width'], r['seed']): r for r in rows}


def assert_same_results(a, b):
  a, b = rows_by_cell(a), rows_by_cell(b)
  assert a.keys() == b.keys()
  for k in a:
    for field in NUMERIC:
      assert a[k].get(field) == b[k].get(field), (k, field, a[k].get(field), b[k].get(field))


def test_bucket_widths_pad_at_most_2x():
  widths = (4, 8, 12, 16, 24, 32, 48, 64, 3, 5)
  buckets = planner.bucket_widths(widths)
  assert sorted(w for b in buckets for w in b) == sorted(set(widths))
  for b in buckets:
    assert max(b) <= 2 * min(b)
  assert planner.bucket_widths((4, 8, 12, 16, 24, 32, 48, 64)) == [[4, 8], [12, 16, 24], [32, 48, 64]]
  c = tiny_config(widths=widths)
  assert [p.widths for p in planner.plan(c)] == [tuple(b) for b in buckets]  # one gd program per bucket


def _gd_program(c, bucket):
  """The planner's gd program of config c, its bucket set to `bucket`."""
  prog = planner.plan(c)[0]
  assert prog.name == 'gd'
  return prog._replace(widths=(bucket,))


def _program(c, cells, bucket, seed_targets=None):
  """engine.run_program of the cells [(width, seed)] in one gd program of width bucket `bucket`."""
  prog = _gd_program(c, bucket)
  runs = [(m, s, 0) for m, s in cells]
  seed_targets = seed_targets or {s: targets.make_target(c, c.dims[0], s, None) for _, s in cells}
  data = planner.run_data(prog, runs, seed_targets)
  return prog, runs, engine.run_program(planner.run_algorithm(prog, runs), prog.task, data, runs,
                                        chunk_steps=config_lib.chunk_of(c))


@pytest.mark.slow
@pytest.mark.parametrize('parametrization', ['cp', 'homogeneous'])
def test_padded_run_equals_unpadded_run(parametrization):
  """(m=3, seed) inside a bucket of width 5 with other widths and seeds == a lone width-3 run."""
  c = tiny_config(x64=True, parametrization=parametrization, reg=0.01)
  _, _, batched = _program(c, [(3, 0), (5, 0), (3, 1), (4, 1)], bucket=5)
  assert batched.exported[0].shape == (4, 5)
  for i, (m, s) in [(0, (3, 0)), (2, (3, 1))]:
    _, _, alone = _program(c, [(m, s)], bucket=3)
    np.testing.assert_allclose(batched.exported[0][i][:3], alone.exported[0][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(batched.exported[1][i][:3], alone.exported[1][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(batched.exported[0][i][3:], 0.0)  # padding stays switched off
    assert batched.state.step[i] == alone.state.step[0]
    assert batched.state.status[i] == alone.state.status[0]


@pytest.mark.slow
def test_divergence_is_marked_and_other_runs_go_on(tmp_path):
  c = tiny_config(lr=0.05)
  seed_targets = {s: targets.make_target(c, 6, s, None) for s in (0, 1)}
  seed_targets[1] = seed_targets[1]._replace(coeffs=seed_targets[1].coeffs * 1e4)  # lr far beyond stability
  prog, runs, out = _program(c, [(3, 0), (3, 1)], 3, seed_targets)
  assert prog.task.loss == 'implicit'
  assert out.state.status[1] == core.DIVERGED
  assert out.state.status[0] != core.DIVERGED and out.state.step[0] > out.state.step[1]
  wd = results.Workdir(str(tmp_path))
  wd.prepare()
  got = rows.finalize(prog, runs, out, seed_targets, wd, True)
  assert got[1]['status'] == 'diverged' and got[1]['rel_error'] is None and got[1]['params_file'] is None
  assert got[0]['status'] in ('converged', 'max_steps') and np.isfinite(got[0]['rel_error'])
  assert got[0]['params_file'] is not None and os.path.exists(os.path.join(str(tmp_path), got[0]['params_file']))


class Crash(Exception):
  pass


@pytest.mark.slow
def test_resume_after_crash_equals_unbroken_run(tmp_path):
  c = tiny_config(widths=(2, 5), trace_every=10, eps=1e-9)  # no early stop: 4 chunks per program
  unbroken = str(tmp_path / 'unbroken')
  experiments.run(c, unbroken)
  calls = []

  def crash_in_second_program(k):
    calls.append(k)
    if len(calls) == 6:  # program 1 ran its 4 chunks, program 2 is 2 chunks in
      raise Crash()

  broken = str(tmp_path / 'broken')
  with pytest.raises(Crash):
    experiments.run(c, broken, on_chunk=crash_in_second_program)
  assert len(load_rows(broken)) == c.num_seeds  # the first program's cells only
  assert os.listdir(os.path.join(broken, 'checkpoints'))
  resumed = []
  experiments.run(c, broken, on_chunk=resumed.append)
  assert resumed[0] == 1  # resumed from the checkpoint of chunk 0 (the crash hit before chunk 1 saved)
  rows = load_rows(broken)
  assert len(rows) == len({(r['width'], r['seed']) for r in rows}) == 4
  assert_same_results(rows, load_rows(unbroken))
  for r in rows:
    a = np.load(os.path.join(broken, r['trajectory_file']))
    b = np.load(os.path.join(unbroken, r['trajectory_file']))
    np.testing.assert_array_equal(a['rel_error'], b['rel_error'])
  assert not os.listdir(os.path.join(broken, 'checkpoints'))
  experiments.run(c, broken)  # a finished workdir computes nothing new
  assert len(load_rows(broken)) == 4


@pytest.mark.slow
def test_torn_results_line_is_recomputed(tmp_path):
  c = tiny_config(widths=(2,))
  wd = str(tmp_path / 'w')
  experiments.run(c, wd)
  with open(os.path.join(wd, 'results.jsonl'), 'rb') as f:
    good = f.read()
  lines = good.split(b'\n')
  with open(os.path.join(wd, 'results.jsonl'), 'wb') as f:
    f.write(lines[0] + b'\n' + lines[1][:20])  # a crash in the middle of the second line
  experiments.run(c, wd)
  rows = load_rows(wd)  # strict: the torn tail was truncated, every line parses
  assert len(rows) == 2
  assert_same_results(rows, [json.loads(x) for x in lines if x])


def test_workdir_with_other_config_is_refused(tmp_path):
  c = tiny_config(widths=(2,), num_seeds=1, steps=30)
  experiments.run(c, str(tmp_path))
  c.lr = 0.01
  with pytest.raises(ValueError, match='different config.*lr'):
    experiments.run(c, str(tmp_path))


# ---- command line: several devices, several processes, user errors -------------------------------

@pytest.fixture(scope='module')
def one_device_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('one'))
  rc, err = finish(launch(wd))
  assert rc == 0, err[-2000:]
  return load_rows(wd)


@pytest.mark.slow
def test_four_devices_give_identical_results(one_device_run, tmp_path):
  rc, err = finish(launch(str(tmp_path), env={'JAX_NUM_CPU_DEVICES': '4'}))
  assert rc == 0, err[-2000:]
  rows = load_rows(str(tmp_path))
  assert_same_results(rows, one_device_run)
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['provenance']['devices'] == 4


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_identical_results(one_device_run, tmp_path):
  port = _free_port()
  procs = [launch(str(tmp_path), '--config.distributed=True', f'--coordinator_address=localhost:{port}',
                  '--num_processes=2', f'--process_id={i}') for i in range(2)]
  for p in procs:
    rc, err = finish(p)
    assert rc == 0, err[-2000:]
  rows = load_rows(str(tmp_path))
  assert len(rows) == len(one_device_run)  # only process 0 wrote
  assert_same_results(rows, one_device_run)
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['provenance']['processes'] == 2




def test_bucket_ratio_groups_the_width_grid():
  """config.bucket_ratio: wider buckets, fewer programs (1: one program per width)."""
  ws = (2, 3, 4, 6, 8, 12, 16)
  assert planner.bucket_widths(ws, 8.0) == [[2, 3, 4, 6, 8, 12, 16]]
  assert planner.bucket_widths(ws, 4.0) == [[2, 3], [4, 6, 8, 12, 16]]
  assert planner.bucket_widths((2, 3, 4), 1.0) == [[2], [3], [4]]
  assert [p.widths for p in planner.plan(tiny_config(widths=ws, bucket_ratio=8.0))] == [ws]
  with pytest.raises(config_lib.ConfigError, match='bucket_ratio'):
    config_lib.validate(tiny_config(bucket_ratio=0.5))


def test_pad_dims_builds_every_d_at_the_largest():
  """config.pad_dims: gd and beyond_lazy (implicit loss) programs of every d are built at max(dims):
  T*'s factors zero-padded, dim_mask on the real d, the same compiled program for every d; without
  it (or with the dense loss, or for lazy_exact) each d is its own."""
  c = tiny_config(algorithms=('gd', 'beyond_lazy', 'lazy_exact'), dims=(4, 7), widths=(2, 3), pad_dims=True,
                  x64=True)
  progs = planner.plan(c)
  built = {(p.name, p.dim): p.built_dim for p in progs}
  assert built == {('gd', 4): 7, ('gd', 7): 7, ('beyond_lazy', 4): 7, ('beyond_lazy', 7): 7,
                   ('lazy_exact', 4): 4, ('lazy_exact', 7): 7}
  gd = {p.dim: p for p in progs if p.name == 'gd'}
  assert gd[4].pad_dim == gd[7].pad_dim == 7 and 'built at d=7' in gd[4].label and 'built' not in gd[7].label
  sharding = engine.NamedSharding(engine.run_mesh(), engine.P('runs'))
  fns = []
  for d, prog in gd.items():
    runs = prog.cells([0, 1])
    data = planner.run_data(prog, runs, {s: targets.make_target(c, d, s, None) for s in (0, 1)})
    assert data.target.factors.shape[1:] == (2, 7)
    np.testing.assert_array_equal(data.dim_mask, np.tile(np.arange(7) < d, (len(runs), 1)))
    assert np.all(data.target.factors[..., d:] == 0)
    fns.append(engine.program_of(planner.run_algorithm(prog, runs), prog.task, data, 30, sharding))
  assert fns[0] is fns[1]  # one compiled program for both d
  for kw in (dict(pad_dims=False), dict(pad_dims=True, loss='dense')):
    assert all(p.pad_dim is None for p in planner.plan(tiny_config(dims=(4, 7), **kw)))


@pytest.mark.slow
def test_pad_dims_rows_match_the_unpadded_sweep(tmp_path):
  """config.pad_dims (+ bucket_ratio): gd and beyond_lazy at every d run programs built at max(dims),
  their data zero-padded; every row matches the unpadded sweep to rounding (same status, steps), and
  the exported factors have d columns."""
  got = {}
  for name, kw in (('plain', {}), ('padded', dict(pad_dims=True, bucket_ratio=4.0))):
    c = tiny_config(x64=True, algorithms=('gd', 'beyond_lazy'), dims=(4, 7), widths=(2, 3, 5), steps=300,
                    chunk_steps=100, **kw)
    wd = str(tmp_path / name)
    experiments.run(c, wd, figures=False)
    got[name] = load_rows(wd)
  assert {r['bucket'] for r in got['padded']} == {5}
  for r in got['padded']:
    with np.load(os.path.join(str(tmp_path / 'padded'), r['params_file'])) as z:
      assert z['factors'].shape == (r['width'], r['dim'])
  plain, padded = rows_by_cell(got['plain']), rows_by_cell(got['padded'])
  assert plain.keys() == padded.keys()
  for k, a in plain.items():
    b = padded[k]
    assert (a['status'], a['steps']) == (b['status'], b['steps']), k
    for field in ('rel_error', 'movement', 'linearization_gap'):
      if a.get(field) is not None:
        np.testing.assert_allclose(b[field], a[field], rtol=1e-10, err_msg=f'{k} {field}')
