"""The workdir store: config.json, results.jsonl, params/*.npz, summary.json, checkpoints.

The contract (README, "The workdir"):
- The tool writes only inside --workdir, and only into a folder that is empty, new, or already an
  overparam workdir (it holds MARKER, or a config.json with the `provenance` the tool records);
  any other non-empty folder is refused with a WorkdirError.
- It deletes only files it created, by exact name: its own temporaries (TMP_RE: `.NAME.overparam-tmp.PID`
  beside the file they replace, in the workdir or one of SUBDIRS) and the checkpoints of the programs
  of the current config (checkpoints/NAME.npz, named by the caller).
- The writer (process 0) holds an exclusive fcntl.flock on LOCK for the whole run; the kernel drops it
  when the process dies, so a killed run resumes at once and a concurrent launch is refused.
- Every row carries `config_fp`, the fingerprint of the config fields that can change a number
  (config_fingerprint); a resume reuses a row only if its fingerprint is the current config's.

Every file is written whole or not at all (temporary file, full write, fsync, rename); results.jsonl
grows by appends of complete lines followed by fsync, and a torn last line (a crash inside the write)
is truncated on the next run, so that cell is recomputed. A disk error is one WorkdirError naming the file.
"""

import errno
import fcntl
import hashlib
import io
import json
import math
import numbers
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from overparam.errors import WorkdirError  # noqa: F401 - re-exported: results.WorkdirError

# alpha: the Chizat alpha of alpha-scaled algorithms' rows (gd; config.alphas makes it a cell axis);
# None for other algorithms. Rows of a sweep with other cell axes (config.axes) also carry `axes`,
# the names of those fields, and each one's value under its dotted name.
CELL_KEYS = ('algorithm', 'order', 'dim', 'rank', 'width', 'seed', 'alpha')
STATUSES = ('converged', 'max_steps', 'unconfirmed', 'diverged')
# config.json fields that record the environment rather than the experiment.
VOLATILE_KEYS = ('provenance',)
# Config fields that cannot change any number of any row: they never block a resume and are left out
# of the fingerprint. chunk_steps: the step sequence does not depend on chunking (tests/test_sweep.py).
NON_RESULT_KEYS = VOLATILE_KEYS + ('memory_gb', 'checkpoint_every_s', 'chunk_steps', 'distributed', 'save_params')

MARKER = '.overparam-workdir'
LOCK = '.overparam.lock'
SUBDIRS = ('params', 'figures', 'checkpoints', 'trajectories')
TMP_TAG = '.overparam-tmp.'
TMP_RE = re.compile(r'^\..+\.overparam-tmp\.\d+(\.npz)?$')
PROBE = '.overparam-probe.'


def cell_id(row: Dict) -> tuple:
  """The cell a row belongs to: CELL_KEYS, then (name, value) of each field in row['axes']."""
  return tuple(row.get(k) for k in CELL_KEYS) + tuple((k, row.get(k)) for k in row.get('axes') or ())


# ---- robust writes --------------------------------------------------------------------------------

def _disk_error(path: str, e: OSError) -> WorkdirError:
  hint = ('the disk is full' if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e))
  return WorkdirError(f'cannot write {path} ({hint}); fix that, then re-run the same command to resume')


def tmp_path(path: str) -> str:
  """The temporary that replaces `path`: `.NAME.overparam-tmp.PID` in the same folder."""
  d, name = os.path.split(path)
  return os.path.join(d, f'.{name}{TMP_TAG}{os.getpid()}')


def _write_all(fd: int, data: bytes):
  """os.write may write fewer bytes than asked: loop until every byte is written."""
  view = memoryview(data)
  while view:
    n = os.write(fd, view)
    if n <= 0:
      raise OSError(errno.EIO, 'short write')
    view = view[n:]


def _fsync_dir(path: str):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_atomic(path: str, data: bytes, sync_dir: bool = True):
  """Writes `path` whole or not at all; WorkdirError naming `path` on a disk error. sync_dir=False
  leaves the folder's fsync to the caller (fsync_dir once after many files)."""
  tmp = tmp_path(path)
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      _write_all(fd, data)
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
      _fsync_dir(os.path.dirname(os.path.abspath(path)))
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)  # our own temporary, by exact name
    raise _disk_error(path, e) from None


def write_json_atomic(path: str, obj):
  write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + '\n').encode())


def save_npz_atomic(path: str, sync_dir: bool = True, **arrays):
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_atomic(path, buf.getvalue(), sync_dir=sync_dir)


def fsync_dir(path: str):
  """Makes the renames into folder `path` durable; WorkdirError naming it on a disk error."""
  try:
    _fsync_dir(path)
  except OSError as e:
    raise _disk_error(path, e) from None


def clean_number(x):
  """float for JSON; None for nan/inf (a diverged number is never reported as a number)."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


# ---- config identity --------------------------------------------------------------------------------

def _flat(d: Dict, prefix: str = '') -> Dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _defaults() -> Dict:
  from overparam import config_lib  # noqa: PLC0415 - config_lib imports jax; only needed here
  return _flat(json.loads(json.dumps(config_lib.base_config().to_dict())))


def _relevant(config: Dict) -> Dict:
  """Flattened fields that can change a number, with fields at their base default left out (so a
  field added to base_config later, at its default, changes nothing)."""
  flat = _flat(json.loads(json.dumps(config)))
  defaults = _defaults()
  return {k: v for k, v in flat.items()
          if k.split('.')[0] not in NON_RESULT_KEYS and not (k in defaults and defaults[k] == v)}


def config_fingerprint(config: Dict) -> str:
  """sha256 (16 hex digits) of the result-relevant fields of a resolved config."""
  blob = json.dumps(_relevant(config), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_differences(old: Dict, new: Dict) -> List[str]:
  """Dotted names of the result-relevant fields in which two configs differ (a field missing from
  either counts as its base default)."""
  a, b = _relevant(old), _relevant(new)
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# ---- rows -------------------------------------------------------------------------------------------

def _is_int(x):
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x):
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def row_problem(row) -> Optional[str]:
  """Why `row` is not a results row (None if it is one)."""
  if not isinstance(row, dict):
    return f'a JSON {type(row).__name__}, not an object'
  for k in ('algorithm', 'status'):
    if not isinstance(row.get(k), str):
      return f'{k} must be a string, got {row.get(k)!r}'
  for k in ('order', 'dim', 'width', 'seed', 'steps'):
    if not _is_int(row.get(k)):
      return f'{k} must be an integer, got {row.get(k)!r}'
  if not (row.get('rank') is None or _is_int(row.get('rank'))):  # null: a dense file target of unknown rank
    return f'rank must be an integer or null, got {row.get("rank")!r}'
  if row['status'] not in STATUSES:
    return f'status must be one of {", ".join(STATUSES)}, got {row["status"]!r}'
  rel = row.get('rel_error', 'missing')
  if not (rel is None or _is_num(rel)):
    return f'rel_error must be a finite number or null, got {rel!r}'
  if (rel is None) != (row['status'] == 'diverged'):
    return f'status {row["status"]!r} contradicts rel_error {rel!r}'
  if not (row.get('alpha') is None or _is_num(row.get('alpha'))):
    return f'alpha must be a number or null, got {row.get("alpha")!r}'
  axes = row.get('axes')
  if not (axes is None or (isinstance(axes, list) and all(isinstance(a, str) for a in axes))):
    return f'axes must be a list of field names, got {axes!r}'
  if axes and not all(row.get(a) is None or _is_num(row.get(a)) for a in axes):
    return f'the axis values {({a: row.get(a) for a in axes})!r} must be numbers or null'
  if not (row.get('config_fp') is None or isinstance(row.get('config_fp'), str)):
    return f'config_fp must be a string, got {row.get("config_fp")!r}'
  return None


class Workdir:
  """A directory holding one experiment's config and results."""

  def __init__(self, path: str):
    self.path = path
    self.results_path = os.path.join(path, 'results.jsonl')
    self.config_path = os.path.join(path, 'config.json')
    self.summary_path = os.path.join(path, 'summary.json')
    self.marker_path = os.path.join(path, MARKER)
    self.lock_path = os.path.join(path, LOCK)
    self.params_dir = os.path.join(path, 'params')
    self.figures_dir = os.path.join(path, 'figures')
    self.ckpt_dir = os.path.join(path, 'checkpoints')
    self.trajectories_dir = os.path.join(path, 'trajectories')
    self._lock_fd = None

  def _err(self, what: str) -> WorkdirError:
    return WorkdirError(f'--workdir {self.path!r}: {what}')

  # -- whose folder is it --
  def read_config(self) -> Optional[Dict]:
    """config.json as a dict, None if absent; WorkdirError naming it if it is not a config."""
    if not os.path.lexists(self.config_path):
      return None
    try:
      with open(self.config_path) as f:
        cfg = json.load(f)
    except (OSError, ValueError) as e:
      raise self._err(f'{self.config_path} is unreadable ({getattr(e, "strerror", None) or type(e).__name__}); '
                      'use a new workdir') from None
    if not isinstance(cfg, dict):
      raise self._err(f'{self.config_path} is a JSON {type(cfg).__name__}, not a config; use a new workdir')
    return cfg

  def is_workdir(self) -> bool:
    """True if this folder was made by the tool (MARKER, or a config.json with provenance)."""
    if os.path.isfile(self.marker_path):
      return True
    try:
      cfg = self.read_config()
    except WorkdirError:
      return False
    return cfg is not None and 'provenance' in cfg

  def _check_ownership(self):
    if not os.path.lexists(self.path):
      return
    if not os.path.isdir(self.path):
      raise self._err('exists and is not a folder')
    try:
      entries = [e for e in os.listdir(self.path) if e != LOCK]
    except OSError as e:
      raise self._err(f'cannot be read ({e.strerror})') from None
    if entries and not self.is_workdir():
      raise self._err(f'is a non-empty folder that is not an overparam workdir (no {MARKER}); '
                      'use a new or empty folder (the tool never writes into folders it did not make)')

  # -- the lock --
  def lock(self):
    """Takes the exclusive lock for this process's lifetime; WorkdirError naming the holder's pid."""
    try:
      fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise _disk_error(self.lock_path, e) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      try:
        holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'unknown'
      finally:
        os.close(fd)
      raise self._err(f'is in use by another launch (pid {holder}); wait for it to finish, or use another '
                      'workdir') from None
    try:
      os.ftruncate(fd, 0)
      _write_all(fd, f'{os.getpid()}\n'.encode())
    except OSError as e:
      os.close(fd)
      raise _disk_error(self.lock_path, e) from None
    self._lock_fd = fd

  def unlock(self):
    if self._lock_fd is not None:
      os.close(self._lock_fd)  # closing drops the flock; the file stays (it is the tool's, reused)
      self._lock_fd = None

  # -- opening for a run --
  def open(self, config: Dict, is_writer: bool = True) -> str:
    """Checks, locks and prepares the workdir for a run of `config` (a resolved config dict);
    returns its fingerprint. Only the writer creates, locks or writes anything."""
    fp = config_fingerprint(config)
    if not is_writer:
      if os.path.isdir(self.path):
        self.check_config(config)
      return fp
    self._check_ownership()
    try:
      os.makedirs(self.path, exist_ok=True)
    except OSError as e:
      raise self._err(f'cannot be created ({e.strerror})') from None
    self.lock()
    self._check_ownership()  # again under the lock: another launch may have written meanwhile
    self.check_config(config)
    self.prepare()
    self.write_config(config)
    return fp

  def check_config(self, config: Dict):
    """Refuses a workdir holding a different experiment, naming the fields; fields that cannot change
    a result never block. Results without a config.json are refused, naming config.json."""
    old = self.read_config()
    if old is None:
      if os.path.isfile(self.results_path) and os.path.getsize(self.results_path) > 0:
        raise self._err(f'{self.results_path} holds results but {self.config_path} is missing, so they cannot '
                        'be shown to belong to this config; restore config.json or use a new workdir')
      return
    diff = config_differences(old, config)
    if diff:
      raise self._err(f'holds a different config (fields differ: {", ".join(diff)}); use a new workdir')

  def prepare(self):
    """Creates the subfolders, removes this tool's stale temporaries, repairs a torn results line, and
    checks that every subfolder can be written."""
    for d in (self.params_dir, self.figures_dir, self.ckpt_dir, self.trajectories_dir):
      if os.path.lexists(d) and not os.path.isdir(d):
        raise WorkdirError(f'--workdir {self.path!r}: {d} is not a folder; move it away and re-run')
      try:
        os.makedirs(d, exist_ok=True)
      except OSError as e:
        raise _disk_error(d, e) from None
    if not os.path.isfile(self.marker_path):
      write_atomic(self.marker_path, b'overparam workdir\n')
    self._remove_own_temporaries()
    self.repair()
    for d in (self.path, self.params_dir, self.figures_dir, self.ckpt_dir, self.trajectories_dir):
      probe = os.path.join(d, f'{PROBE}{os.getpid()}')
      try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
          _write_all(fd, b'ok')
        finally:
          os.close(fd)
        os.remove(probe)
      except OSError as e:
        raise _disk_error(d, e) from None

  def _remove_own_temporaries(self):
    """Temporaries a killed run of this tool left (under the lock, no other writer is live): only names
    matching TMP_RE or this tool's probe, in the workdir and its SUBDIRS (not deeper)."""
    for d in (self.path,) + tuple(os.path.join(self.path, s) for s in SUBDIRS):
      for f in os.listdir(d):
        p = os.path.join(d, f)
        if (TMP_RE.match(f) or re.match(rf'^{re.escape(PROBE)}\d+$', f)) and os.path.isfile(p) \
            and not os.path.islink(p):
          os.remove(p)

  def write_config(self, config: Dict):
    write_json_atomic(self.config_path, config)

  def remove_checkpoints(self, names: Sequence[str]):
    """Removes the checkpoints named (plain file names in checkpoints/ that this config writes)."""
    for n in names:
      p = os.path.join(self.ckpt_dir, os.path.basename(n))
      if os.path.isfile(p) and not os.path.islink(p):
        os.remove(p)

  # -- rows --
  def load_results(self, fingerprint: Optional[str] = None) -> List[Dict]:
    """All rows, one per cell (the first wins). A torn last line (no newline: a crash mid-append) is
    dropped. Any other line that is not a row is a WorkdirError naming the file and line; with
    `fingerprint`, so is a row stamped with another config's fingerprint."""
    if not os.path.lexists(self.results_path):
      return []
    try:
      with open(self.results_path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise self._err(f'{self.results_path} cannot be read ({e.strerror})') from None
    lines = data.split(b'\n')
    if lines and lines[-1].strip():
      lines = lines[:-1]  # torn by a crash mid-write: the cell is recomputed
    rows, seen = [], set()
    for i, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        problem = row_problem(row)
      except ValueError:
        problem = 'not valid JSON'
      if problem is None and fingerprint is not None and row.get('config_fp') not in (None, fingerprint):
        problem = (f'it was computed under another config (fingerprint {row["config_fp"]}, this config '
                   f'{fingerprint})')
      if problem:
        raise self._err(f'{self.results_path} line {i} is not a result row of this config ({problem}); '
                        'remove that line or use a new workdir')
      if cell_id(row) not in seen:
        seen.add(cell_id(row))
        rows.append(row)
    return rows

  def repair(self):
    """Truncates a torn last line (a crash inside an append) so the log holds complete lines only."""
    if not os.path.exists(self.results_path):
      return
    try:
      with open(self.results_path, 'rb+') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
          f.truncate(data.rfind(b'\n') + 1)
          f.flush()
          os.fsync(f.fileno())
    except OSError as e:
      raise _disk_error(self.results_path, e) from None

  def append_results(self, rows: Iterable[Dict]):
    """Appends complete lines (every byte written), then fsync. A disk error leaves at most a torn
    last line, which the next run truncates."""
    text = ''.join(json.dumps(r, sort_keys=True, allow_nan=False) + '\n' for r in rows)
    if not text:
      return
    try:
      fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      try:
        _write_all(fd, text.encode())
        os.fsync(fd)
      finally:
        os.close(fd)
    except OSError as e:
      raise _disk_error(self.results_path, e) from None
