"""The workdir contract (README, "The workdir"), through real launches and real calls into the store:
what the tool may delete, the lock, rows that belong to their config, robust writes, resuming across
code versions, and one error line (or exit 130) where a traceback used to be."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from overparam import config_lib, experiments, results, rows
from overparam.errors import WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = config_lib.base_config().to_dict()
TINY = ['--config=configs/default.py', '--config.x64=False', '--config.algorithms=("gd",)', '--config.dims=(4,)',
        '--config.rank=2', '--config.widths=(2,3)', '--config.num_seeds=1', '--config.steps=40',
        '--config.chunk_steps=20']


def launch(workdir, *extra, tiny=True, **kw):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.Popen([sys.executable, 'launch.py', *(TINY if tiny else []), f'--workdir={workdir}', *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run(workdir, *extra, **kw):
  p = launch(workdir, *extra, **kw)
  _, err = p.communicate(timeout=300)
  return p.returncode, err


def last_line(err):
  return err.strip().splitlines()[-1] if err.strip() else ''


def snapshot(path):
  """{relative path: bytes} of every file under path (but the lock file, which holds the last holder's pid)."""
  out = {}
  for d, _, files in os.walk(path):
    for f in files:
      if f == results.LOCK:
        continue
      p = os.path.join(d, f)
      with open(p, 'rb') as fh:
        out[os.path.relpath(p, path)] = fh.read()
  return out


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """One finished tiny workdir (2 cells); tests copy it before changing anything."""
  wd = str(tmp_path_factory.mktemp('finished') / 'wd')
  rc, err = run(wd)
  assert rc == 0, err[-2000:]
  return wd, err


def copy_of(finished, tmp_path):
  dst = str(tmp_path / 'wd')
  shutil.copytree(finished[0], dst)
  return dst


def resolved_config(wd):
  with open(os.path.join(wd, 'config.json')) as f:
    return json.load(f)


def rows_of(wd):
  with open(os.path.join(wd, 'results.jsonl')) as f:
    return [json.loads(x) for x in f if x.strip()]


# ---- 1. deleting only what the tool wrote ----------------------------------------------------------

@pytest.mark.slow
def test_foreign_folder_is_refused_and_untouched(tmp_path):
  foreign = tmp_path / 'home'
  (foreign / 'checkpoints' / 'sub').mkdir(parents=True)
  for name in ('notes.tmp.1', '.write_probe.7', 'checkpoints/mine.npz', 'checkpoints/sub/x', 'paper.tex'):
    (foreign / name).write_text('keep me')
  before = snapshot(foreign)
  rc, err = run(str(foreign))
  assert rc == 2 and 'not an overparam workdir' in last_line(err) and str(foreign) in last_line(err), err[-500:]
  assert 'Traceback' not in err
  assert snapshot(foreign) == before and sorted(os.listdir(foreign)) == sorted(['checkpoints', 'notes.tmp.1',
                                                                              '.write_probe.7', 'paper.tex'])


@pytest.mark.slow
def test_resume_deletes_only_its_own_names(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  os.makedirs(os.path.join(wd, 'checkpoints', 'sub'))
  users = ['notes.tmp.1', '.write_probe.3', 'params/mine.tmp.7.npz', 'checkpoints/other.npz', 'checkpoints/sub/x',
           'figures/draft.png.tmp.2']
  for u in users:
    with open(os.path.join(wd, u), 'w') as f:
      f.write('user file')
  stale = os.path.join(wd, 'params', '.gd_l3_d4_m2_s0.npz.overparam-tmp.99999')  # a killed run's temporary
  with open(stale, 'w') as f:
    f.write('partial')
  rc, err = run(wd)
  assert rc == 0, err[-2000:]
  for u in users:
    assert os.path.exists(os.path.join(wd, u)), u
  assert not os.path.exists(stale)
  assert len(rows_of(wd)) == 2  # nothing recomputed


# ---- 2. one launch per workdir ------------------------------------------------------------------------

@pytest.mark.slow
def test_second_launch_is_refused_naming_the_holder(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  holder = results.Workdir(wd, defaults=DEFAULTS)
  holder.open(resolved_config(wd))  # this test process holds the lock, as a running launch does
  try:
    before = snapshot(wd)
    rc, err = run(wd)
    line = last_line(err)
    assert rc == 2 and 'in use by another launch' in line and f'pid {os.getpid()}' in line and wd in line, line
    assert snapshot(wd) == before
  finally:
    holder.unlock()


@pytest.mark.slow
def test_lock_of_a_killed_process_is_released_at_once(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  code = (f'import json, time; from overparam import config_lib, results; '
          f'w = results.Workdir({wd!r}, defaults=config_lib.base_config().to_dict()); '
          f'w.open(json.load(open({os.path.join(wd, "config.json")!r}))); print("locked", flush=True); time.sleep(60)')
  p = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert p.stdout.readline().strip() == 'locked'
  with pytest.raises(WorkdirError, match=f'pid {p.pid}'):
    results.Workdir(wd).lock()
  p.send_signal(signal.SIGKILL)
  p.wait()
  w = results.Workdir(wd)
  w.lock()  # the kernel dropped the dead holder's lock
  w.unlock()


# ---- 3. rows belong to the config beside them ---------------------------------------------------------

@pytest.mark.slow
def test_results_without_config_are_refused(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  os.remove(os.path.join(wd, 'config.json'))
  before = snapshot(wd)
  rc, err = run(wd, '--config.lr=0.01')
  line = last_line(err)
  assert rc == 2 and 'config.json is missing' in line and 'results.jsonl' in line, line
  assert snapshot(wd) == before


def test_row_of_another_config_is_never_reused(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  fp = results.config_fingerprint(resolved_config(wd), DEFAULTS)
  rows = rows_of(wd)
  assert all(r['config_fp'] == fp for r in rows)
  rows[1]['config_fp'] = '0123456789abcdef'  # e.g. config.json replaced by hand after another run
  with open(os.path.join(wd, 'results.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
  with pytest.raises(WorkdirError, match='results.jsonl line 2 .*another config'):
    results.Workdir(wd).load_results(fp)


def test_fingerprint_ignores_fields_that_cannot_change_a_number():
  c = config_lib.base_config().to_dict()
  fp = results.config_fingerprint(c, DEFAULTS)
  for k, v in (('memory_gb', 3.0), ('checkpoint_every_s', 1.0), ('chunk_steps', 7), ('save_params', False),
               ('provenance', {'jax': 'x'}), ('fingerprint', '0123')):
    assert results.config_fingerprint({**c, k: v}, DEFAULTS) == fp, k
  assert results.config_fingerprint({**c, 'lr': 0.01}, DEFAULTS) != fp
  older = {k: v for k, v in c.items() if k != 'signs'}  # a field added later, at its default
  assert results.config_fingerprint(older, DEFAULTS) == fp and results.config_differences(older, c, DEFAULTS) == []


# ---- 12.4: workdirs that outlive the code --------------------------------------------------------------

@pytest.mark.slow
def test_resume_across_new_fields_and_non_result_fields(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  cfg = resolved_config(wd)
  del cfg['signs'], cfg['target']['noise']  # written by an older version that lacked these fields
  with open(os.path.join(wd, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  rows = rows_of(wd)
  rc, err = run(wd, '--config.memory_gb=64', '--config.checkpoint_every_s=5', '--config.chunk_steps=10')
  assert rc == 0, err[-2000:]
  assert rows_of(wd) == rows  # resumed: nothing recomputed
  rc, err = run(wd, '--config.lr=0.01', '--config.eps=0.1')
  assert rc == 2 and 'fields differ: eps, lr' in last_line(err), last_line(err)


# ---- 7. one line, not a traceback -----------------------------------------------------------------------

@pytest.mark.parametrize('line', [b'{}\n', b'[1, 2]\n', b'"row"\n',
                                  b'{"algorithm": "gd", "order": 3, "dim": 4, "rank": 2, "width": 2, "seed": 5, '
                                  b'"steps": 3, "status": "converged", "rel_error": "0.01"}\n',
                                  b'{"algorithm": "gd", "order": 3, "dim": 4, "rank": 2, "width": 2, "seed": 5, '
                                  b'"steps": 3, "status": "converged", "rel_error": 0.01, "axes": 5}\n'])
@pytest.mark.slow
def test_a_line_that_is_not_a_row_is_named_and_nothing_is_appended(finished, tmp_path, line):
  wd = copy_of(finished, tmp_path)
  with open(os.path.join(wd, 'results.jsonl'), 'ab') as f:
    f.write(line)
  before = snapshot(wd)
  with pytest.raises(WorkdirError, match='results.jsonl line 3 is not a result row'):
    experiments.plot_only(wd)
  if line == b'{}\n':  # one through the launcher: every later run says the same, appends nothing
    for _ in range(2):
      rc, err = run(wd)
      assert rc == 2 and 'results.jsonl line 3' in last_line(err) and 'Traceback' not in err, err[-800:]
    assert snapshot(wd) == before


@pytest.mark.parametrize('damage, named', [
    (lambda wd: open(os.path.join(wd, 'config.json'), 'w').write('[1, 2]'), 'config.json'),
    (lambda wd: open(os.path.join(wd, 'config.json'), 'w').write('{"lr": 0.1}'), 'config.json'),
    (lambda wd: os.remove(os.path.join(wd, 'config.json')), 'config.json'),
    (lambda wd: (shutil.rmtree(os.path.join(wd, 'figures')),
                 open(os.path.join(wd, 'figures'), 'w').write('x')), 'figures'),
])
def test_plot_only_on_a_damaged_workdir_names_the_file(finished, tmp_path, damage, named):
  wd = copy_of(finished, tmp_path)
  damage(wd)
  with pytest.raises(WorkdirError, match=named):
    experiments.plot_only(wd)


@pytest.mark.slow
def test_plot_only_through_the_launcher(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  with open(os.path.join(wd, 'config.json'), 'w') as f:
    f.write('[]')
  rc, err = run(wd, '--plot_only', tiny=False)
  assert rc == 2 and 'config.json' in last_line(err) and 'Traceback' not in err, err[-500:]


@pytest.mark.slow
def test_a_subfolder_that_cannot_be_written_is_found_before_computing(finished, tmp_path):
  wd = copy_of(finished, tmp_path)
  with open(os.path.join(wd, 'results.jsonl'), 'w'):
    pass  # every cell is to be computed again
  shutil.rmtree(os.path.join(wd, 'params'))
  with open(os.path.join(wd, 'params'), 'w') as f:
    f.write('not a folder')
  rc, err = run(wd)
  assert rc == 2 and 'params is not a folder' in last_line(err), last_line(err)
  assert 'chunk' not in err and os.path.getsize(os.path.join(wd, 'results.jsonl')) == 0  # nothing computed


def test_disk_full_is_one_error_naming_the_file_and_leaves_nothing_torn(tmp_path, monkeypatch):
  target = str(tmp_path / 'summary.json')
  results.write_json_atomic(target, {'old': 1})

  def full(fd, data):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(os, 'write', full)
  with pytest.raises(WorkdirError, match='summary.json.*disk is full'):
    results.write_json_atomic(target, {'new': 2})
  with pytest.raises(WorkdirError, match='results.jsonl.*disk is full'):
    results.Workdir(str(tmp_path)).append_results([{'a': 1}])
  monkeypatch.undo()
  assert json.load(open(target)) == {'old': 1} and sorted(os.listdir(tmp_path)) == ['results.jsonl', 'summary.json']


def test_short_writes_are_completed(tmp_path, monkeypatch):
  real = os.write
  monkeypatch.setattr(os, 'write', lambda fd, data: real(fd, bytes(data[:3])))  # 3 bytes per call
  w = results.Workdir(str(tmp_path))
  rows = [{'x': i, 'pad': 'y' * 50} for i in range(4)]
  w.append_results(rows)
  results.write_json_atomic(str(tmp_path / 's.json'), {'k': list(range(30))})
  monkeypatch.undo()
  assert [json.loads(x) for x in open(tmp_path / 'results.jsonl')] == rows
  assert json.load(open(tmp_path / 's.json')) == {'k': list(range(30))}


@pytest.mark.slow
def test_sigint_says_resume_and_exits_130(tmp_path):
  wd = str(tmp_path / 'wd')
  # A tiny step keeps every run live for 10^6 steps; the signal is sent once the program is running
  # (its first progress line), however fast this machine or a warm compilation cache makes the start.
  # Ctrl-C from a terminal reaches a launch whose SIGINT has its default action; a suite started as a
  # background job (`cmd &`) inherits SIGINT ignored, which exec keeps, so the launch gets a default here.
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    p = launch(wd, '--config.steps=1000000', '--config.chunk_steps=20', '--config.lr=1e-6', '--verbose')
  finally:
    signal.signal(signal.SIGINT, before)
  seen = []
  for line in p.stderr:
    seen.append(line)
    if 'chunk 1/' in line:
      break
  p.send_signal(signal.SIGINT)
  _, rest = p.communicate(timeout=120)
  err = ''.join(seen) + rest
  assert p.returncode == 130 and 'resume' in last_line(err) and 'Traceback' not in err, err[-800:]


@pytest.mark.slow
def test_internal_bug_keeps_its_traceback(tmp_path):
  code = ('import sys; from absl import app; import launch; from overparam import experiments\n'
          'def bug(*a, **k): raise IndexError("a library bug")\n'
          'experiments.run = bug\n'
          f'sys.argv = ["launch.py", *{TINY!r}, "--workdir={tmp_path / "wd"}"]\n'
          'app.run(launch.main, flags_parser=launch.parse_flags)\n')
  p = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert p.returncode == 1 and 'Traceback' in p.stderr and 'IndexError: a library bug' in p.stderr
  assert 'error:' not in p.stderr


@pytest.mark.parametrize('args, expect', [
    (['--config.distributed=True'], '--coordinator_address'),
    (['--config.distributed=True', '--coordinator_address=localhost:1234', '--num_processes=2', '--process_id=2'],
     '--process_id must be in [0, --num_processes=2)'),
    (['--process_id=0'], 'only apply with --config.distributed=True'),
    (['--config.seed=18446744073709551616'], 'config.seed'),
    (['--config.steps=4294967296'], 'config.steps'),
    (['--config.orderr=3'], "config has no field 'orderr' (did you mean config.order?)"),
    (['--config.order=1'], 'config.order'),
    (['--config.widths=(0,2)'], 'config.widths'),
    (['--config.lr=-1.0'], 'config.lr'),
    (['--config.target.kind=gaussian'], 'config.target.kind'),
    (['--config=configs/does_not_exist.py'], '--config'),
    (['--config.target.weights=(1,foo)'], "--config.target.weights='(1,foo)' is not a tuple literal"),
    (['--config.distributed=True', '--coordinator_address=localhost:1234', '--num_processes=2', '--process_id=1',
      '--coordinator_timeout_s=0'], '--coordinator_timeout_s must be an integer >= 1'),
])
@pytest.mark.slow
def test_bad_flags_are_one_line_and_nothing_is_written(tmp_path, args, expect):
  rc, err = run(str(tmp_path / 'wd'), *args)
  assert rc == 2 and last_line(err).startswith('error:') and expect in last_line(err), err[-800:]
  assert 'Traceback' not in err and not (tmp_path / 'wd').exists()


# ---- 8. phases are logged; a kill while finishing loses nothing ---------------------------------------

def test_log_is_compact_and_verbose_on_demand(finished, tmp_path):
  """By default one line per program (no per-phase or per-chunk lines); with --verbose every phase."""
  err = finished[1]
  assert 'runs in' in err and 'finishing' not in err and 'chunk 1/' not in err
  rc, verbose = run(str(tmp_path / 'v'), '--verbose')
  assert rc == 0, verbose[-2000:]
  for phase in ('building targets', 'finishing', 'drawing figures', 'chunk 1/'):
    assert phase in verbose, phase


class Crash(Exception):
  pass


@pytest.mark.slow
def test_kill_while_finishing_resumes_without_recomputing(tmp_path, monkeypatch):
  from tests.support import tiny_config  # noqa: PLC0415
  c = tiny_config(widths=(2, 3), num_seeds=1, steps=60, dims=(4,))
  unbroken = experiments.run(c, str(tmp_path / 'unbroken'))
  real = rows.finalize

  def crash(*a, **k):
    real(*a, **k)  # params written, rows not yet appended: the worst moment
    raise Crash()
  monkeypatch.setattr(rows, 'finalize', crash)
  wd = str(tmp_path / 'broken')
  with pytest.raises(Crash):
    experiments.run(c, wd)
  monkeypatch.setattr(rows, 'finalize', real)
  assert os.listdir(os.path.join(wd, 'checkpoints'))  # the final state is checkpointed before finishing
  chunks = []
  summary = experiments.run(c, wd, on_chunk=chunks.append)
  assert chunks == []  # nothing recomputed: finishing resumed from the final checkpoint
  assert summary['thresholds'] == unbroken['thresholds']
  a, b = rows_of(wd), rows_of(str(tmp_path / 'unbroken'))
  assert [(r['width'], r['rel_error'], r['status']) for r in a] == [(r['width'], r['rel_error'], r['status']) for r in b]
  assert not os.listdir(os.path.join(wd, 'checkpoints'))
