"""The workdir store against a hostile user (README, "The workdir"): links, FIFOs, hard links, read-only
and foreign files, kills at random points, a full disk at every single write, rows and checkpoints
that belong to another workdir, and processes that must agree on a refusal. Every case calls
overparam/results.py directly (no launch), so each costs milliseconds."""

import contextlib
import errno
import inspect
import json
import os
import pathlib
import random
import shutil
import signal
import tempfile
import threading
import time

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from overparam import config_lib, plots, results, tensors  # noqa: E402
from overparam.errors import UserError, WorkdirError  # noqa: E402

from tests.support import tiny_config  # noqa: E402

DEFAULTS = config_lib.base_config().to_dict()


def config(**overrides):
  """A resolved config dict as experiments.run passes it to Workdir.open."""
  return tiny_config(dims=(4,), widths=(2,), num_seeds=1, **overrides).to_dict()


def row(fp, **kw):
  r = {'algorithm': 'gd', 'order': 3, 'dim': 4, 'rank': 2, 'width': 2, 'seed': 0, 'steps': 10, 'alpha': 1.0,
       'status': 'converged', 'rel_error': 0.01, 'config_fp': fp, 'params_file': None}
  r.update(kw)
  return r


def opened(path, cfg=None):
  """A workdir opened and closed again, as a finished launch leaves it; returns (Workdir, fingerprint)."""
  w = results.Workdir(str(path), defaults=DEFAULTS)
  fp = w.open(cfg or config())
  w.unlock()
  return w, fp


def snapshot(path):
  """{relative path: bytes or link target} of everything under path (links are not followed)."""
  out = {}
  for d, dirs, files in os.walk(path):
    for f in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
      p = os.path.join(d, f)
      rel = os.path.relpath(p, path)
      if os.path.islink(p):
        out[rel] = 'link -> ' + os.readlink(p)
      elif os.path.isfile(p):
        with open(p, 'rb') as fh:
          out[rel] = fh.read()
  return out


@contextlib.contextmanager
def no_hang(seconds=5):
  """Turns a blocking call (a FIFO opened without O_NONBLOCK) into a failure instead of a hung suite."""
  def boom(*_):
    raise AssertionError(f'blocked for {seconds} s')
  old = signal.signal(signal.SIGALRM, boom)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def outside(tmp_path):
  """A folder outside the workdir holding files named exactly like the tool's temporaries, probes,
  checkpoints and figures."""
  d = tmp_path / 'outside'
  d.mkdir()
  for name in ('.x.npz.overparam-tmp.12345', f'.summary.json.overparam-tmp.{os.getpid()}',
               f'.overparam-probe.{os.getpid()}', 'gd_l3_d4_B2.npz', 'rel_error_vs_width_gd.png', 'precious'):
    (d / name).write_bytes(b'user data ' + name.encode())
  return d


# ---- 1. links: nothing written, truncated or deleted through a link it did not make ------------------

@pytest.mark.parametrize('sub', results.SUBDIRS)
def test_a_subfolder_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, outside, sub):
  w, fp = opened(tmp_path / 'wd')
  os.rmdir(os.path.join(w.root, sub))
  os.symlink(outside, os.path.join(w.root, sub))
  before = snapshot(outside)
  with pytest.raises(WorkdirError, match=rf'{sub} is a symbolic link'):
    results.Workdir(w.path, defaults=DEFAULTS).open(config())
  # the store's own deleters and writers refuse the link too, whoever calls them
  if sub == 'checkpoints':
    with pytest.raises(WorkdirError, match='symbolic link'):
      w.remove_checkpoints(['gd_l3_d4_B2.npz'])
  with pytest.raises(WorkdirError, match='symbolic link'):
    results.save_npz_atomic(os.path.join(w.root, sub, 'gd_l3_d4_B2.npz'), x=np.zeros(2))
  assert snapshot(outside) == before


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, outside):
  w, _ = opened(tmp_path / 'wd')
  os.remove(w.lock_path)
  os.symlink(outside / 'precious', w.lock_path)
  before = snapshot(outside)
  with pytest.raises(WorkdirError, match=r'\.overparam\.lock is a symbolic link'):
    results.Workdir(w.path, defaults=DEFAULTS).open(config())
  assert snapshot(outside) == before


@pytest.mark.parametrize('content', [b'my notes\n', b'12 monkeys\n', b'\x00\x01'])
def test_a_lock_holding_anything_but_a_pid_is_not_taken_for_the_tools(tmp_path, content):
  w, _ = opened(tmp_path / 'wd')
  with open(w.lock_path, 'wb') as f:
    f.write(content)
  with pytest.raises(WorkdirError, match="not the tool's lock file"):
    results.Workdir(w.path, defaults=DEFAULTS).open(config())
  with open(w.lock_path, 'rb') as f:
    assert f.read() == content  # not truncated, not overwritten with a pid


def test_a_lock_hard_linked_to_a_user_file_is_refused(tmp_path, outside):
  w, _ = opened(tmp_path / 'wd')
  os.remove(w.lock_path)
  (outside / 'pid').write_bytes(b'1\n')  # even one that looks like a lock
  os.link(outside / 'pid', w.lock_path)
  with pytest.raises(WorkdirError, match='hard links'):
    results.Workdir(w.path, defaults=DEFAULTS).open(config())
  assert (outside / 'pid').read_bytes() == b'1\n'


@pytest.mark.parametrize('content', [b'', b'123\n', b'notes'])
def test_a_folder_holding_only_a_user_lock_file_is_not_empty(tmp_path, content):
  d = tmp_path / 'mine'
  d.mkdir()
  (d / results.LOCK).write_bytes(content)
  with pytest.raises(WorkdirError, match=r'not an overparam workdir .*\.overparam\.lock'):
    results.Workdir(str(d), defaults=DEFAULTS).open(config())
  assert os.listdir(d) == [results.LOCK] and (d / results.LOCK).read_bytes() == content


def test_a_marker_that_is_a_link_does_not_make_a_workdir(tmp_path, outside):
  d = tmp_path / 'mine'
  d.mkdir()
  os.symlink(outside / 'precious', d / results.MARKER)
  (d / 'paper.tex').write_text('x')
  with pytest.raises(WorkdirError, match=r'not an overparam workdir \(its \.overparam-workdir is a symbolic link'):
    results.Workdir(str(d), defaults=DEFAULTS).open(config())
  assert sorted(os.listdir(d)) == [results.MARKER, 'paper.tex']


@pytest.mark.parametrize('name', ['config.json', 'results.jsonl', 'summary.json', 'params/gd_l3_d4_m2_s0.npz',
                                  'figures/rel_error_vs_width_gd.png', 'checkpoints/gd_l3_d4_B2.npz'])
def test_a_file_that_is_a_link_is_never_written_through(tmp_path, outside, name):
  w, fp = opened(tmp_path / 'wd')
  p = os.path.join(w.root, name)
  if os.path.exists(p):
    os.remove(p)
  os.symlink(outside / 'precious', p)
  before = snapshot(outside)
  with pytest.raises(WorkdirError, match=rf'{os.path.basename(name)} is a symbolic link'):
    if name == 'config.json':
      results.Workdir(w.path, defaults=DEFAULTS).open(config())
    elif name == 'results.jsonl':
      w.append_results([row(fp)])
    elif name.startswith('checkpoints/'):
      results.load_checkpoint(p, [np.zeros(2)], 'prog', fp)
    else:
      results.write_atomic(p, b'new content')
  if name == 'results.jsonl':
    for call in (w.load_results, w.repair):
      with pytest.raises(WorkdirError, match='symbolic link'):
        call()
  if name.startswith('checkpoints/'):
    assert results.remove_checkpoint(p) is False  # kept: a link is never taken for the tool's checkpoint
  assert snapshot(outside) == before and os.path.islink(p)


def test_a_temporary_name_that_is_a_link_is_neither_followed_nor_removed(tmp_path, outside):
  w, fp = opened(tmp_path / 'wd')
  mine = os.path.join(w.root, f'.summary.json.overparam-tmp.{os.getpid()}')  # the exact name this process uses
  stale = os.path.join(w.figures_dir, '.x.png.overparam-tmp.99999')
  os.symlink(outside / 'precious', mine)
  os.symlink(outside, stale)
  before = snapshot(outside)
  with pytest.raises(WorkdirError, match='symbolic link'):
    results.write_json_atomic(w.summary_path, {'a': 1})
  results.Workdir(w.path, defaults=DEFAULTS).open(config())  # prepare removes stale temporaries: not links
  assert os.path.islink(mine) and os.path.islink(stale) and snapshot(outside) == before


def test_a_workdir_given_as_a_link_is_resolved_once(tmp_path):
  real = tmp_path / 'real'
  real.mkdir()
  os.symlink(real, tmp_path / 'alias')
  w, fp = opened(tmp_path / 'alias')
  w.append_results([row(fp)])
  assert w.root == str(real) and len(results.Workdir(str(real)).load_results()) == 1


@pytest.mark.parametrize('name', ['results.jsonl', 'config.json', results.LOCK])
def test_a_fifo_in_the_workdir_is_named_and_never_blocks(tmp_path, name):
  w, fp = opened(tmp_path / 'wd')
  p = os.path.join(w.root, name)
  if os.path.exists(p):
    os.remove(p)
  os.mkfifo(p)
  with no_hang(), pytest.raises(WorkdirError, match=rf'{name} is a FIFO'):
    if name == 'results.jsonl':
      w.load_results(fp)
    else:
      results.Workdir(w.path, defaults=DEFAULTS).open(config())
  if name == 'results.jsonl':
    with no_hang(), pytest.raises(WorkdirError, match='is a FIFO'):
      w.append_results([row(fp)])


def test_results_hard_linked_elsewhere_are_not_appended_to(tmp_path, outside):
  w, fp = opened(tmp_path / 'wd')
  w.append_results([row(fp)])
  os.link(w.results_path, outside / 'copy.jsonl')
  before = snapshot(outside)
  with pytest.raises(WorkdirError, match='hard links'):
    w.append_results([row(fp, width=3)])
  assert snapshot(outside) == before


# ---- 2. every file atomic ---------------------------------------------------------------------------

def test_plots_write_every_figure_through_the_atomic_path():
  """Static: no savefig in plots.py but through results.save_figure_atomic (a new figure must use it)."""
  src = inspect.getsource(plots)
  assert '.savefig(' not in src.replace('results.save_figure_atomic(', '')
  assert src.count('results.save_figure_atomic(fig, path') == 1  # in _save, which every figure calls
  assert src.count('_save(fig, ') >= 10


def _figure(title):
  fig, ax = plt.subplots(figsize=(2, 2))
  ax.plot([1, 2, 3], [3, 1, 2])
  ax.set_title(title)
  return fig


def _complete_png(data: bytes) -> bool:
  return data.startswith(b'\x89PNG\r\n\x1a\n') and data[-12:-4] == b'\x00\x00\x00\x00IEND'


def test_a_figure_that_fails_mid_write_keeps_the_complete_one(tmp_path, monkeypatch):
  path = str(tmp_path / 'f.png')
  results.save_figure_atomic(_figure('old'), path, dpi=50)
  old = open(path, 'rb').read()
  assert _complete_png(old)
  real, calls = os.write, []

  def dies_after_one_chunk(fd, data):
    calls.append(1)
    if len(calls) > 1:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real(fd, bytes(data[:100]))
  monkeypatch.setattr(os, 'write', dies_after_one_chunk)
  with pytest.raises(WorkdirError, match=r'f\.png \(the disk is full\)'):
    results.save_figure_atomic(_figure('new'), path, dpi=50)
  monkeypatch.undo()
  assert open(path, 'rb').read() == old and os.listdir(tmp_path) == ['f.png']


def test_a_read_only_file_is_named_and_kept(tmp_path):
  path = tmp_path / 'figures' / 'm_star_vs_dim.png'
  path.parent.mkdir()
  path.write_bytes(b'my figure')
  os.chmod(path, 0o444)
  with pytest.raises(WorkdirError, match=r'cannot write .*figures/m_star_vs_dim\.png: it is read-only'):
    results.save_figure_atomic(_figure('x'), str(path))
  assert path.read_bytes() == b'my figure' and os.listdir(path.parent) == ['m_star_vs_dim.png']


def _killed_writer(w, fig_path, blob_path, seed):
  """In a forked child: write the figure, the blob and results rows over and over until killed."""
  rng = random.Random(seed)
  blobs = [bytes([i]) * (3 << 20) for i in (1, 2)]
  fig = _figure('kill me')
  i = 0
  while True:
    i += 1
    results.write_atomic(blob_path, blobs[i % 2])
    results.save_figure_atomic(fig, fig_path, dpi=40 + rng.randrange(40))
    results.write_json_atomic(w.summary_path, {'i': i, 'pad': 'x' * rng.randrange(1 << 16)})


@pytest.mark.filterwarnings('ignore::RuntimeWarning')  # os.fork() in a multithreaded (jax) process: the child
def test_sigkill_of_a_writer_at_random_points_leaves_old_or_new_files(tmp_path):  # only writes files
  w, fp = opened(tmp_path / 'wd')
  fig_path, blob_path = os.path.join(w.figures_dir, 'f.png'), os.path.join(w.params_dir, 'blob.npz')
  blobs = {bytes([i]) * (3 << 20) for i in (1, 2)}
  rng = random.Random(0)
  for trial in range(8):
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
      try:
        _killed_writer(w, fig_path, blob_path, trial)
      finally:
        os._exit(1)
    time.sleep(rng.uniform(0.02, 0.3))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    for p, ok in ((fig_path, _complete_png), (blob_path, lambda b: b in blobs),
                  (w.summary_path, lambda b: isinstance(json.loads(b), dict))):
      if os.path.exists(p):
        with open(p, 'rb') as f:
          assert ok(f.read()), (trial, p)
  results.Workdir(w.path, defaults=DEFAULTS).open(config())  # the next run removes the killed one's temporaries
  left = [f for d in (w.root, w.figures_dir, w.params_dir) for f in os.listdir(d) if results.TMP_TAG in f]
  assert left == [] and os.path.exists(fig_path)


# ---- 3. identity of the inputs -------------------------------------------------------------------------

def test_the_fingerprint_covers_the_content_of_a_target_file(tmp_path):
  a, b = results.file_digest(b'tensor A'), results.file_digest(b'tensor B')
  cfg = config()
  assert results.config_fingerprint(results.with_inputs(cfg, {'target.path': None}), DEFAULTS) == \
      results.config_fingerprint(cfg, DEFAULTS)  # no input file: fingerprints of older workdirs unchanged
  fa = results.config_fingerprint(results.with_inputs(cfg, {'target.path': a}), DEFAULTS)
  fb = results.config_fingerprint(results.with_inputs(cfg, {'target.path': b}), DEFAULTS)
  assert len({fa, fb, results.config_fingerprint(cfg, DEFAULTS)}) == 3
  w, fp = opened(tmp_path / 'wd', results.with_inputs(cfg, {'target.path': a}))
  assert fp == fa
  w.append_results([row(fa)])
  with pytest.raises(WorkdirError, match=r'config\.target\.path holds another file than the one its results were '
                                         rf'computed from \(content {a} then, {b} now\)'):
    results.Workdir(w.path, defaults=DEFAULTS).open(results.with_inputs(cfg, {'target.path': b}))
  with pytest.raises(WorkdirError, match='line 1 .*another config'):
    w.load_results(fb)  # and a row of tensor A is never a row of tensor B


def test_a_checkpoint_is_resumed_only_by_the_run_that_wrote_it(tmp_path, caplog):
  p = str(tmp_path / 'gd_l3_d4_B2.npz')
  leaves = [np.arange(3.0), np.ones((2, 2), np.float32)]
  results.save_checkpoint(p, leaves, {'rel_error': np.ones((3, 4))}, 5, 'program-fp', 'run-A')
  got = results.load_checkpoint(p, leaves, 'program-fp', 'run-A')
  assert got[2] == 5 and all(np.array_equal(x, y) for x, y in zip(got[0], leaves)) and 'rel_error' in got[1]
  assert results.load_checkpoint(p, leaves, 'program-fp', 'run-B') is None  # another target, config.json removed
  assert 'written by another run' in caplog.text
  assert results.load_checkpoint(p, leaves, 'other-program', 'run-A') is None
  assert results.load_checkpoint(p, [np.arange(4.0), leaves[1]], 'program-fp', 'run-A') is None
  assert results.remove_checkpoint(p) and not os.path.exists(p)


@pytest.mark.parametrize('content', [b'not an npz', None])
def test_a_file_named_like_a_checkpoint_that_the_tool_did_not_write_is_refused_and_kept(tmp_path, content):
  p = tmp_path / 'gd_l3_d4_B2.npz'
  if content is None:
    np.savez(p, s0=np.zeros(3))  # a real npz, but not a checkpoint
  else:
    p.write_bytes(content)
  before = p.read_bytes()
  with pytest.raises(WorkdirError, match='is not a checkpoint this tool wrote'):
    results.load_checkpoint(str(p), [np.zeros(3)], 'prog', 'run')
  assert results.remove_checkpoint(str(p)) is False and p.read_bytes() == before


def test_a_target_file_read_for_the_run_is_the_one_hashed(tmp_path):
  path = str(tmp_path / 't.npz')
  np.savez(path, coeffs=np.ones(2), factors=np.eye(4)[:2])
  (c1, _), d1 = tensors.load_target(path, 3, (4,), 2)
  np.savez(path, coeffs=np.array([1.0, 2.0]), factors=np.eye(4)[:2])  # overwritten at the same path
  (c2, _), d2 = tensors.load_target(path, 3, (4,), 2)
  with open(path, 'rb') as f:
    assert d2 == results.file_digest(f.read()) != d1 and not np.array_equal(c1, c2)


# ---- 4. rows read back are checked --------------------------------------------------------------------

BAD_ROWS = [
    (dict(status='converged', rel_error=0.5), 'contradicts rel_error 0.5 and eps 0.05'),
    (dict(status='max_steps', rel_error=0.001), 'contradicts rel_error 0.001'),
    (dict(status='unconfirmed', rel_error=0.049), 'contradicts'),
    (dict(status='converged', rel_error=None), 'diverged iff rel_error is null'),
    (dict(status='diverged', rel_error=0.2), 'diverged iff rel_error is null'),
    (dict(algorithm='lazy'), "algorithm 'lazy' is not one of the workdir's config.algorithms"),
    (dict(algorithm='sgd'), "algorithm 'sgd' is not one of"),
    (dict(config_fp=None), 'carries no config_fp'),
    (dict(config_fp='0123456789abcdef'), 'another config'),
    (dict(order=4), 'order 4 is not'),
    (dict(dim=7), 'dim 7 is not'),
    (dict(seed=9), 'seed 9 is outside'),
    (dict(params_file='../../../etc/passwd'), 'params_file must be null or params/NAME.npz'),
    (dict(trajectory_file='/tmp/x.npz'), 'trajectory_file must be'),
    (dict(), 'a second row of the cell of line 1'),
]


@pytest.mark.parametrize('edit, match', BAD_ROWS, ids=[m[:40] for _, m in BAD_ROWS])
def test_a_hand_edited_row_is_an_error_naming_file_and_line(tmp_path, edit, match):
  w, fp = opened(tmp_path / 'wd')
  w.append_results([row(fp)])
  fake = row(fp, **edit)
  if 'config_fp' in edit and edit['config_fp'] is None:
    del fake['config_fp']  # a row without a fingerprint at all
  with open(w.results_path, 'a') as f:
    f.write(json.dumps(fake) + '\n')
  for reader in (lambda: w.load_results(fp), lambda: w.load_results(),
                 lambda: results.Workdir(w.path).load_results()):  # resume, --plot_only, without the defaults
    with pytest.raises(WorkdirError, match=r'results\.jsonl line 2 is not a result row of this config \(.*'
                       + match.replace('(', r'\(').replace(')', r'\)').replace('.', r'\.')):
      reader()


def test_the_status_boundary_is_exact(tmp_path):
  w, fp = opened(tmp_path / 'wd')
  eps = config()['eps']
  good = [row(fp, width=2, rel_error=np.nextafter(eps, 0)), row(fp, width=3, status='max_steps', rel_error=eps),
          row(fp, width=4, status='unconfirmed', rel_error=eps), row(fp, width=5, status='diverged', rel_error=None)]
  w.append_results(good)
  assert len(w.load_results()) == 4


def test_an_edited_config_json_no_longer_vouches_for_its_rows(tmp_path):
  w, fp = opened(tmp_path / 'wd')
  w.append_results([row(fp, status='max_steps', rel_error=0.3)])
  cfg = json.load(open(w.config_path))
  cfg['eps'] = 0.5  # by hand: the row now contradicts eps, and the config is not the one that computed it
  with open(w.config_path, 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(WorkdirError, match='line 1 .*contradicts rel_error 0.3 and eps 0.5'):
    results.Workdir(w.path, defaults=DEFAULTS).load_results()
  cfg['eps'], cfg['lr'] = 0.05, 0.07  # a field that changes numbers: a resume refuses the config itself
  with open(w.config_path, 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(WorkdirError, match=r'holds a different config \(fields differ: lr\)'):
    results.Workdir(w.path, defaults=DEFAULTS).open(config())  # (--plot_only believes config.json's fingerprint)
  del cfg['fingerprint']  # a config.json of an older version: its fingerprint is recomputed
  with open(w.config_path, 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(WorkdirError, match='line 1 .*another config'):
    results.Workdir(w.path, defaults=DEFAULTS).load_results()


def test_an_old_config_json_without_inputs_cannot_vouch_for_a_file_target(tmp_path):
  cfg = config()
  w, fp = opened(tmp_path / 'wd', cfg)  # as an older version wrote it: no `inputs`
  with pytest.raises(WorkdirError, match='does not record the content of the file config.target.path names'):
    results.Workdir(w.path, defaults=DEFAULTS).open(results.with_inputs(cfg, {'target.path': 'sha256:00'}))


# ---- 5. a failure at any point is resumable -----------------------------------------------------------

class Faults:
  """Makes the n-th filesystem call (os.write, fsync, replace, mkdir, ftruncate, an os.open that creates)
  fail with ENOSPC, a write after writing half its bytes (the disk filled up inside it); counts the calls."""

  def __init__(self, monkeypatch, fail_at):
    self.n, self.fail_at = 0, fail_at
    for name in ('write', 'fsync', 'replace', 'mkdir', 'ftruncate', 'open'):
      real = getattr(os, name)
      monkeypatch.setattr(os, name, self._wrap(name, real))

  def _wrap(self, name, real):
    def call(*a, **k):
      if name != 'open' or (len(a) > 1 and a[1] & os.O_CREAT):
        self.n += 1
        if self.n == self.fail_at:
          if name == 'write' and len(a[1]) > 1:
            real(a[0], bytes(a[1][:len(a[1]) // 2]))
          raise OSError(errno.ENOSPC, 'No space left on device')
      return real(*a, **k)
    return call


def _one_run(path):
  """What a launch does to its workdir, in order: open, resume, checkpoint, params, rows, clean up,
  summary, figure. Computes the one cell only if results.jsonl lacks it."""
  w = results.Workdir(path, defaults=DEFAULTS)
  fp = w.open(config())
  try:
    if not w.load_results(fp):
      ckpt = os.path.join(w.ckpt_dir, 'gd_l3_d4_B2.npz')
      results.load_checkpoint(ckpt, [np.zeros(3)], 'prog', fp)  # the failed run's, if it got that far
      results.save_checkpoint(ckpt, [np.zeros(3)], {}, 1, 'prog', fp)
      results.save_npz_atomic(os.path.join(w.params_dir, 'gd_l3_d4_m2_s0.npz'), sync_dir=False, coeffs=np.ones(2))
      results.fsync_dir(w.params_dir)
      w.append_results([row(fp, params_file='params/gd_l3_d4_m2_s0.npz')])
      results.remove_checkpoint(ckpt)
    w.remove_checkpoints(['gd_l3_d4_B2.npz'])
    results.write_json_atomic(w.summary_path, {'rows': len(w.load_results(fp))})
    results.write_atomic(os.path.join(w.figures_dir, 'f.png'), b'\x89PNG figure')
  finally:
    w.unlock()


@pytest.fixture
def fast_tmp(tmp_path):
  """A folder on tmpfs when there is one (the fault loop runs ~100 short runs: fsync there is free)."""
  if not os.path.isdir('/dev/shm') or not os.access('/dev/shm', os.W_OK):
    yield tmp_path
    return
  d = tempfile.mkdtemp(prefix='overparam-test-', dir='/dev/shm')
  try:
    yield pathlib.Path(d)
  finally:
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize('start', ['new', 'empty'])
def test_a_disk_error_at_any_write_leaves_a_workdir_the_same_command_resumes(fast_tmp, monkeypatch, start):
  tmp_path = fast_tmp
  clean = str(tmp_path / 'clean')
  counter = Faults(monkeypatch, fail_at=0)
  _one_run(clean)
  monkeypatch.undo()
  total = counter.n
  assert total > 20  # every kind of write of a run is exercised
  for k in range(1, total + 1):
    wd = tmp_path / f'k{k}'
    if start == 'empty':
      wd.mkdir()
    with monkeypatch.context() as m:
      Faults(m, fail_at=k)
      try:
        _one_run(str(wd))
      except WorkdirError as e:  # one error naming a file; anything else is a bug
        assert 'disk is full' in str(e) and 're-run the same command' in str(e), (k, e)
    _one_run(str(wd))  # the same command resumes, whatever the failure left
    assert len(results.Workdir(str(wd)).load_results()) == 1, k
    assert json.load(open(wd / 'summary.json')) == {'rows': 1}
    left = [f for d, _, fs in os.walk(wd) for f in fs if results.TMP_TAG in f or results.PROBE in f]
    assert left == [] and os.listdir(wd / 'checkpoints') == [], (k, left)


# ---- 6. several processes agree on a refusal ----------------------------------------------------------

def _threads_as_processes(fns):
  """Runs fns[i] as 'process i' in threads with an allgather over a barrier; returns each one's outcome
  (the value, or the exception)."""
  n = len(fns)
  slots, barrier, out = [None] * n, threading.Barrier(n, timeout=10), [None] * n

  def gather_for(i):
    def allgather(x):
      slots[i] = np.array(x)
      barrier.wait()
      got = np.stack(slots)
      barrier.wait()
      return got
    return allgather

  def body(i):
    try:
      out[i] = results.on_every_process(fns[i], n, gather_for(i))
    except Exception as e:  # noqa: BLE001 - returned for the test to inspect
      out[i] = e
  threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(20)
  assert not any(t.is_alive() for t in threads), 'a process is still waiting in the collective'
  return out


def test_a_process_refused_by_the_lock_stops_every_process_with_the_same_error(tmp_path):
  w, _ = opened(tmp_path / 'wd')
  holder = results.Workdir(w.path, defaults=DEFAULTS)
  holder.lock()  # another launch holds the workdir
  try:
    cfg = config()
    writer = results.Workdir(w.path, defaults=DEFAULTS)
    readers = [results.Workdir(w.path, defaults=DEFAULTS) for _ in range(2)]
    out = _threads_as_processes([lambda: writer.open(cfg, True)] + [lambda r=r: r.open(cfg, False) for r in readers])
  finally:
    holder.unlock()
  assert all(isinstance(e, WorkdirError) for e in out), out
  assert len({str(e) for e in out}) == 1 and 'in use by another launch' in str(out[0])


def test_a_refusal_on_a_reader_process_stops_the_writer_and_releases_its_lock(tmp_path):
  w, _ = opened(tmp_path / 'wd')
  undone = []
  writer = results.Workdir(w.path, defaults=DEFAULTS)

  def bad_reader():
    raise WorkdirError('--workdir x: process 1 cannot read it')
  out = [None, None]
  slots, barrier = [None, None], threading.Barrier(2, timeout=10)

  def gather(i):
    def allgather(x):
      slots[i] = np.array(x)
      barrier.wait()
      got = np.stack(slots)
      barrier.wait()
      return got
    return allgather

  def proc(i, fn, undo=None):
    try:
      out[i] = results.on_every_process(fn, 2, gather(i), undo=undo)
    except Exception as e:  # noqa: BLE001
      out[i] = e
  ts = [threading.Thread(target=proc, args=(0, lambda: writer.open(config()), lambda: (undone.append(1),
                                                                                       writer.unlock()))),
        threading.Thread(target=proc, args=(1, bad_reader))]
  for t in ts:
    t.start()
  for t in ts:
    t.join(20)
  assert [type(e) for e in out] == [WorkdirError, WorkdirError] and str(out[0]) == str(out[1])
  assert undone == [1]
  results.Workdir(w.path, defaults=DEFAULTS).lock()  # the writer let its lock go


def test_one_process_and_a_bug_elsewhere():
  assert results.on_every_process(lambda: 7, 1) == 7
  out = _threads_as_processes([lambda: 1, lambda: [][1]])
  assert isinstance(out[1], IndexError) and isinstance(out[0], RuntimeError) and 'process 1 failed' in str(out[0])
  assert isinstance(out[0], Exception) and not isinstance(out[0], UserError)
  assert _threads_as_processes([lambda: 1, lambda: 2]) == [1, 2]


def test_a_long_message_is_cut_not_lost():
  out = _threads_as_processes([lambda: (_ for _ in ()).throw(WorkdirError('x' * 10000)), lambda: 2])
  assert isinstance(out[1], WorkdirError) and str(out[1]) == str(out[0])[:len(str(out[1]))] and len(str(out[1])) > 4000



@pytest.mark.parametrize('name', ['results.jsonl', results.LOCK, 'config.json', 'summary.json'])
def test_a_read_only_file_of_the_workdir_is_never_rewritten(tmp_path, name):
  w, fp = opened(tmp_path / 'wd')
  w.append_results([row(fp)])
  results.write_json_atomic(w.summary_path, {'a': 1})
  p = os.path.join(w.root, name)
  before = open(p, 'rb').read()
  os.chmod(p, 0o444)
  with pytest.raises(WorkdirError, match=r'cannot write .*: it is read-only'):
    if name == 'summary.json':
      results.write_json_atomic(w.summary_path, {'a': 2})
    else:
      results.Workdir(w.path, defaults=DEFAULTS).open(config())
  assert open(p, 'rb').read() == before
