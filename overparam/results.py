"""The workdir store: config.json, results.jsonl, params/*.npz, summary.json, figures, checkpoints.

The contract (README, "The workdir"):
- The tool writes only inside --workdir, and only into a folder that is empty, new, or already an
  overparam workdir (it holds MARKER, a regular file, or a config.json with the `provenance` the tool
  records); any other non-empty folder is refused with a WorkdirError. The marker is the first thing
  a run writes (created exclusively: it exists whole or not at all), so whatever a failed launch
  leaves, the same command resumes it.
- Links: --workdir itself may be a symbolic link (it is resolved once, Workdir.root); inside it the
  tool follows no link. Every file is opened with O_NOFOLLOW relative to a folder opened with
  O_NOFOLLOW, so a subfolder, file, lock or temporary that is a link (or not a regular file) is a
  WorkdirError naming it; nothing is written, truncated or deleted through it. A file written in place
  (the lock, results.jsonl) that has other hard links is refused too; a file it replaces that is
  read-only (no owner write bit) is refused, naming it.
- It deletes only files it created, by exact name, and only regular files: its own temporaries (TMP_RE:
  `.NAME.overparam-tmp.PID` beside the file they replace, in the workdir or one of SUBDIRS), its probes,
  and checkpoints (checkpoints/NAME.npz, named by the caller) that carry CKPT_MAGIC.
- The writer (process 0) holds an exclusive fcntl.flock on LOCK for the whole run; the kernel drops it
  when the process dies, so a killed run resumes at once and a concurrent launch is refused. A LOCK
  that holds anything but a pid is not the tool's and is refused.
- Identity: every row carries `config_fp`, the fingerprint of the config fields that can change a number
  plus `inputs` (the sha256 of every input file, e.g. a file target's bytes) (config_fingerprint); every
  checkpoint carries the fingerprint of the run that wrote it and is resumed only by that run.
- Rows read back (resume, summary, --plot_only) are checked against the workdir's config.json and the
  status rules (check_row); a row that fails is a WorkdirError naming the file and line.

Every file but results.jsonl is written whole or not at all (temporary file, full write, fsync, rename);
results.jsonl grows by appends of complete lines followed by fsync, and a torn last line (a crash inside
the write) is truncated on the next run, so that cell is recomputed. A disk error is one WorkdirError
naming the file.

This module imports neither jax nor config_lib: what it needs of the config (its defaults, for the
fingerprint) is passed in.
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
import stat
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from overparam.errors import UserError, WorkdirError  # noqa: F401 - re-exported: results.WorkdirError

# alpha: the Chizat alpha of alpha-scaled algorithms' rows (gd; config.alphas makes it a cell axis);
# None for other algorithms. Rows of a sweep with other cell axes (config.axes) also carry `axes`,
# the names of those fields, and each one's value under its dotted name.
CELL_KEYS = ('algorithm', 'order', 'dim', 'rank', 'width', 'seed', 'alpha')
STATUSES = ('converged', 'max_steps', 'unconfirmed', 'diverged')
# config.json fields that record the environment (provenance) or are derived (fingerprint).
VOLATILE_KEYS = ('provenance', 'fingerprint')
# config.json's record of the content of every input file: {'target.path': 'sha256:...'}. Part of the
# fingerprint; absent when the config reads no file (so such configs' fingerprints are unchanged).
INPUTS_KEY = 'inputs'
# Config fields that cannot change any number of any row: they never block a resume and are left out
# of the fingerprint. chunk_steps: the step sequence does not depend on chunking (tests/test_sweep.py).
NON_RESULT_KEYS = VOLATILE_KEYS + ('memory_gb', 'checkpoint_every_s', 'chunk_steps', 'distributed', 'save_params')

MARKER = '.overparam-workdir'
MARKER_TEXT = b'overparam workdir\n'
LOCK = '.overparam.lock'
SUBDIRS = ('params', 'figures', 'checkpoints', 'trajectories')
TMP_TAG = '.overparam-tmp.'
TMP_RE = re.compile(r'^\..+\.overparam-tmp\.\d+(\.npz)?$')
PROBE = '.overparam-probe.'
PROBE_RE = re.compile(rf'^{re.escape(PROBE)}\d+$')
CKPT_MAGIC = 'overparam-checkpoint'
# A row's params_file / trajectory_file: a plain name in that subfolder (never a path elsewhere).
_FILE_FIELDS = {'params_file': 'params', 'trajectory_file': 'trajectories'}

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def cell_id(row: Dict) -> tuple:
  """The cell a row belongs to: CELL_KEYS, then (name, value) of each field in row['axes']."""
  return tuple(row.get(k) for k in CELL_KEYS) + tuple((k, row.get(k)) for k in row.get('axes') or ())


# ---- files: no links, no partial writes ------------------------------------------------------------

def _kind(mode: int) -> str:
  for test, name in ((stat.S_ISLNK, 'a symbolic link'), (stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'),
                     (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a character device'),
                     (stat.S_ISBLK, 'a block device'), (stat.S_ISREG, 'a regular file')):
    if test(mode):
      return name
  return 'not a regular file'


def _link_error(path: str) -> WorkdirError:
  return WorkdirError(f'{path} is a symbolic link: the tool never writes, truncates or deletes through a link '
                      'inside its workdir; remove the link (put a real folder or file there) or use a new workdir')


def _not_regular(path: str, mode: int) -> WorkdirError:
  if stat.S_ISLNK(mode):
    return _link_error(path)
  return WorkdirError(f'{path} is {_kind(mode)}, not a regular file the tool wrote; move it away and re-run')


def _disk_error(path: str, e: OSError) -> WorkdirError:
  if e.errno == errno.ELOOP:
    return _link_error(path)
  hint = ('the disk is full' if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e))
  return WorkdirError(f'cannot write {path} ({hint}); fix that, then re-run the same command to resume')


def tmp_path(path: str) -> str:
  """The temporary that replaces `path`: `.NAME.overparam-tmp.PID` in the same folder."""
  d, name = os.path.split(path)
  return os.path.join(d, _tmp_name(name))


def _tmp_name(name: str) -> str:
  return f'.{name}{TMP_TAG}{os.getpid()}'


def _write_all(fd: int, data: bytes):
  """os.write may write fewer bytes than asked: loop until every byte is written."""
  view = memoryview(data)
  while view:
    n = os.write(fd, view)
    if n <= 0:
      raise OSError(errno.EIO, 'short write')
    view = view[n:]


def _open_dir(path: str, dfd: Optional[int] = None) -> int:
  """A folder's fd, not following a link in its last component (O_NOFOLLOW; `path` relative to dfd when
  given). WorkdirError naming it when it is a link or not a folder; OSError otherwise."""
  try:
    return os.open(os.path.basename(path) if dfd is not None else path,
                   os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=dfd)
  except OSError as e:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):  # Linux: ENOTDIR for a link with O_DIRECTORY | O_NOFOLLOW
      if os.path.islink(path):
        raise _link_error(path) from None
      if e.errno == errno.ENOTDIR and os.path.lexists(path):
        raise WorkdirError(f'{path} is not a folder; move it away and re-run') from None
    raise


def _lstat_at(dfd: int, name: str) -> Optional[os.stat_result]:
  try:
    return os.stat(name, dir_fd=dfd, follow_symlinks=False)
  except FileNotFoundError:
    return None


def _read_only(st: os.stat_result) -> bool:
  """No owner write bit: the user marked the file read-only (checked by mode, so also under root)."""
  return not st.st_mode & stat.S_IWUSR


def _check_replaceable(dfd: int, name: str, path: str):
  """`path` (name in dfd) may be replaced: absent, or a regular file that is not read-only."""
  st = _lstat_at(dfd, name)
  if st is None:
    return
  if not stat.S_ISREG(st.st_mode):
    raise _not_regular(path, st.st_mode)
  if _read_only(st):
    raise WorkdirError(f'cannot write {path}: it is read-only (mode {stat.S_IMODE(st.st_mode):04o}); make it '
                       'writable (chmod u+w) or move it away, then re-run the same command')


def _create_exclusive(dfd: int, name: str, path: str, stale_ok: bool) -> int:
  """Creates `name` in dfd with O_EXCL | O_NOFOLLOW. stale_ok: a regular file of that exact name (this
  tool's temporary of a dead process with our pid) is removed first; a link there is an error."""
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
  try:
    return os.open(name, flags, 0o644, dir_fd=dfd)
  except FileExistsError:
    st = _lstat_at(dfd, name)
    if st is None or not stale_ok:
      raise
    if not stat.S_ISREG(st.st_mode):
      raise _not_regular(os.path.join(os.path.dirname(path), name), st.st_mode) from None
    os.unlink(name, dir_fd=dfd)
    return os.open(name, flags, 0o644, dir_fd=dfd)


def write_atomic(path: str, data: bytes, sync_dir: bool = True):
  """Writes `path` whole or not at all (temporary, full write, fsync, rename, fsync of the folder);
  WorkdirError naming `path` on a disk error, or when `path` or its folder is a link, `path` is not a
  regular file, or it is read-only. sync_dir=False leaves the folder's fsync to the caller (fsync_dir
  once after many files)."""
  d, name = os.path.split(os.path.abspath(path))
  try:
    dfd = _open_dir(d)
  except OSError as e:
    raise _disk_error(path, e) from None
  tmp, created = _tmp_name(name), False
  try:
    _check_replaceable(dfd, name, path)
    fd = _create_exclusive(dfd, tmp, path, stale_ok=True)
    created = True
    try:
      _write_all(fd, data)
      os.fsync(fd)
    finally:
      os.close(fd)
    _check_replaceable(dfd, name, path)  # again: it may have become a link while we wrote
    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    created = False
    if sync_dir:
      os.fsync(dfd)
  except OSError as e:
    if created:
      _unlink_quietly(dfd, tmp)  # our own temporary, by exact name
    raise _disk_error(path, e) from None
  except WorkdirError:
    if created:
      _unlink_quietly(dfd, tmp)
    raise
  finally:
    os.close(dfd)


def _unlink_quietly(dfd: int, name: str):
  try:
    os.unlink(name, dir_fd=dfd)
  except OSError:
    pass


def write_json_atomic(path: str, obj):
  write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + '\n').encode())


def save_npz_atomic(path: str, sync_dir: bool = True, **arrays):
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_atomic(path, buf.getvalue(), sync_dir=sync_dir)


def save_figure_atomic(fig, path: str, **savefig_kwargs):
  """Renders a matplotlib figure to bytes (format from the file name's extension, png by default) and
  writes them with write_atomic: a kill while drawing leaves the previous figure, never a torn one."""
  ext = os.path.splitext(path)[1][1:].lower() or 'png'
  buf = io.BytesIO()
  fig.savefig(buf, format=ext, **savefig_kwargs)
  write_atomic(path, buf.getvalue())


def fsync_dir(path: str):
  """Makes the renames into folder `path` durable; WorkdirError naming it on a disk error."""
  try:
    fd = _open_dir(path)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError as e:
    raise _disk_error(path, e) from None


def _open_regular(path: str, flags: int, mode: int = 0o644, dfd: Optional[int] = None) -> Tuple[int, os.stat_result]:
  """os.open with O_NOFOLLOW | O_NONBLOCK (a FIFO never blocks), then a check that it is a regular file;
  returns (fd, its stat). WorkdirError naming `path` for a link or anything but a regular file;
  OSError otherwise (FileNotFoundError when absent and not created)."""
  name = os.path.basename(path) if dfd is not None else path
  try:
    fd = os.open(name, flags | _NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dfd)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise _link_error(path) from None
    if e.errno == errno.ENXIO:  # a FIFO without a reader, opened for writing
      raise WorkdirError(f'{path} is a FIFO, not a regular file the tool wrote; move it away and re-run') from None
    raise
  st = os.fstat(fd)
  if not stat.S_ISREG(st.st_mode):
    os.close(fd)
    raise _not_regular(path, st.st_mode)
  fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
  return fd, st


def read_regular(path: str) -> Optional[bytes]:
  """The bytes of a regular file of the workdir (None if absent); WorkdirError naming it for a link,
  a FIFO, a folder or a device; OSError for other read errors."""
  try:
    fd, _ = _open_regular(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    chunks = []
    while True:
      b = os.read(fd, 1 << 20)
      if not b:
        return b''.join(chunks)
      chunks.append(b)
  finally:
    os.close(fd)


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


def _relevant(config: Dict, defaults: Dict) -> Dict:
  """Flattened fields that can change a number, with fields at their base default left out (so a
  field added to base_config later, at its default, changes nothing). defaults: the base config as a
  dict (config_lib.base_config().to_dict(); passed in, this module does not import config_lib)."""
  if defaults is None:
    raise TypeError('the fingerprint needs the base config (defaults=config_lib.base_config().to_dict())')
  flat = _flat(json.loads(json.dumps(config)))
  base = _flat(json.loads(json.dumps(defaults)))
  return {k: v for k, v in flat.items()
          if k.split('.')[0] not in NON_RESULT_KEYS and not (k in base and base[k] == v)}


def config_fingerprint(config: Dict, defaults: Dict) -> str:
  """sha256 (16 hex digits) of the result-relevant fields of a resolved config, its `inputs` (the
  content hashes of its input files) included."""
  blob = json.dumps(_relevant(config, defaults), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_differences(old: Dict, new: Dict, defaults: Dict) -> List[str]:
  """Dotted names of the result-relevant fields in which two configs differ (a field missing from
  either counts as its base default)."""
  a, b = _relevant(old, defaults), _relevant(new, defaults)
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def file_digest(data: bytes) -> str:
  """The content identity of an input file: 'sha256:<hex>' of its bytes."""
  return 'sha256:' + hashlib.sha256(data).hexdigest()


def with_inputs(config: Dict, inputs: Dict[str, Optional[str]]) -> Dict:
  """config with `inputs` ({dotted field: file_digest of the file it names}) recorded, so that the
  fingerprint covers the content of every input file. No inputs: config unchanged."""
  inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
  return {**config, INPUTS_KEY: dict(sorted(inputs.items()))} if inputs else dict(config)


# ---- rows -------------------------------------------------------------------------------------------

def _is_int(x):
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x):
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def row_problem(row) -> Optional[str]:
  """Why `row` is not a well-formed results row (None if it is one): types and the status against
  rel_error's presence. check_row adds the rules that need the workdir's config."""
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
    return f'status {row["status"]!r} contradicts rel_error {rel!r} (diverged iff rel_error is null)'
  if not (row.get('alpha') is None or _is_num(row.get('alpha'))):
    return f'alpha must be a number or null, got {row.get("alpha")!r}'
  axes = row.get('axes')
  if not (axes is None or (isinstance(axes, list) and all(isinstance(a, str) for a in axes))):
    return f'axes must be a list of field names, got {axes!r}'
  if axes and not all(row.get(a) is None or _is_num(row.get(a)) for a in axes):
    return f'the axis values {({a: row.get(a) for a in axes})!r} must be numbers or null'
  if not (row.get('config_fp') is None or isinstance(row.get('config_fp'), str)):
    return f'config_fp must be a string, got {row.get("config_fp")!r}'
  for k, sub in _FILE_FIELDS.items():
    v = row.get(k)
    if v is not None and not (isinstance(v, str) and re.fullmatch(rf'{sub}/[^/\\]+\.npz', v) and '..' not in v):
      return f'{k} must be null or {sub}/NAME.npz (a file of the workdir), got {v!r}'
  return None


class RowRules(NamedTuple):
  """What a row of one workdir must agree with (row_rules builds it from config.json)."""
  eps: float
  algorithms: Tuple[str, ...]
  order: int
  dims: Tuple[int, ...]
  seeds: Tuple[int, int]  # [first, last]
  fingerprint: str


def row_rules(config: Dict, fingerprint: str, where: str) -> RowRules:
  """RowRules of a config dict (config.json); WorkdirError naming `where` when a field they need is
  not what the tool writes there."""
  def bad(field, value, want):
    return WorkdirError(f'{where} has no valid {field} ({want}), got {value!r}; restore it or use a new workdir')
  eps = config.get('eps')
  if not (_is_num(eps) and 0 < eps < 1):
    raise bad('eps', eps, 'a number in (0, 1)')
  algs = config.get('algorithms')
  if not (isinstance(algs, (list, tuple)) and algs and all(isinstance(a, str) for a in algs)):
    raise bad('algorithms', algs, 'a non-empty list of names')
  order = config.get('order')
  if not (_is_int(order) and order >= 2):
    raise bad('order', order, 'an integer >= 2')
  dims = config.get('dims')
  if not (isinstance(dims, (list, tuple)) and dims and all(_is_int(d) for d in dims)):
    raise bad('dims', dims, 'a non-empty list of integers')
  seed, n = config.get('seed'), config.get('num_seeds')
  if not (_is_int(seed) and _is_int(n) and n >= 1):
    raise bad('seed and num_seeds', (seed, n), 'integers, num_seeds >= 1')
  return RowRules(float(eps), tuple(algs), order, tuple(dims), (seed, seed + n - 1), fingerprint)


def check_row(row, rules: RowRules) -> Optional[str]:
  """Why `row` cannot be a row of the workdir described by `rules` (None if it can): a well-formed row
  (row_problem) of one of its algorithms, order, dims and seeds, whose status agrees with its
  rel_error (converged iff rel_error < eps; unconfirmed and max_steps only with rel_error >= eps;
  diverged iff rel_error is null), stamped with the workdir's fingerprint."""
  problem = row_problem(row)
  if problem:
    return problem
  if row['algorithm'] not in rules.algorithms:
    return f'algorithm {row["algorithm"]!r} is not one of the workdir\'s config.algorithms {list(rules.algorithms)}'
  if row['order'] != rules.order:
    return f'order {row["order"]} is not the workdir\'s config.order {rules.order}'
  if row['dim'] not in rules.dims:
    return f'dim {row["dim"]} is not one of the workdir\'s config.dims {list(rules.dims)}'
  if not rules.seeds[0] <= row['seed'] <= rules.seeds[1]:
    return f'seed {row["seed"]} is outside the workdir\'s seeds {rules.seeds[0]}..{rules.seeds[1]}'
  rel, status = row['rel_error'], row['status']
  if rel is not None and (status == 'converged') != (rel < rules.eps):
    return (f'status {status!r} contradicts rel_error {rel!r} and eps {rules.eps!r} (converged iff rel_error < eps; '
            'unconfirmed and max_steps only with rel_error >= eps)')
  fp = row.get('config_fp')
  if fp is None:
    return 'it carries no config_fp (the fingerprint of the config that computed it)'
  if fp != rules.fingerprint:
    return f'it was computed under another config (fingerprint {fp}, this config {rules.fingerprint})'
  return None


# ---- checkpoints ------------------------------------------------------------------------------------

def save_checkpoint(path: str, leaves: Sequence[np.ndarray], trace: Dict[str, np.ndarray], chunks_done: int,
                    program_fp: str, run_fp: Optional[str]):
  """Atomically writes a program's state (its leaves, in order) and the trace recorded so far ({} when
  not tracing), stamped with CKPT_MAGIC, the program's fingerprint and the run's (config_fingerprint)."""
  arrays = {f's{i}': np.asarray(x) for i, x in enumerate(leaves)}
  arrays.update({f't_{k}': np.asarray(v) for k, v in trace.items()})
  meta = {'magic': CKPT_MAGIC, 'chunks_done': int(chunks_done), 'fingerprint': program_fp, 'run': run_fp}
  save_npz_atomic(path, **arrays, meta=np.array(json.dumps(meta)))


class _Npz:
  """np.load of an open fd (dup'ed, closed with it): `.z` is the NpzFile, or None when the file is not
  an npz archive; `.meta` the checkpoint stamp, or None when it is not a checkpoint of this tool (an
  older version's carries chunks_done and no magic)."""

  def __init__(self, fd: int):
    self.f = os.fdopen(os.dup(fd), 'rb')
    self.z = self.meta = None
    try:
      z = np.load(self.f, allow_pickle=False)
    except Exception:  # noqa: BLE001 - anything that is not an npz archive is not ours
      return
    if not isinstance(z, np.lib.npyio.NpzFile):
      return
    self.z = z
    try:
      meta = json.loads(str(z['meta'])) if 'meta' in z.files else None
    except Exception:  # noqa: BLE001
      meta = None
    if isinstance(meta, dict) and (meta.get('magic') == CKPT_MAGIC or 'chunks_done' in meta):
      self.meta = meta

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.z is not None:
      self.z.close()
    self.f.close()


def _not_a_checkpoint(path: str) -> WorkdirError:
  return WorkdirError(f'{path} is not a checkpoint this tool wrote (it cannot be read as one); the tool never '
                      'replaces or deletes a file it did not write: move it away and re-run')


def load_checkpoint(path: str, like_leaves: Sequence, program_fp: str, run_fp: Optional[str]):
  """(leaves, trace, chunks_done) of the checkpoint at `path`, or None if there is none, or it was
  written by another run (another config_fingerprint: another config or another input file) or another
  program, or its arrays do not match like_leaves (shape, dtype); each refusal is logged. WorkdirError
  naming `path` when it is a link, not a regular file, or not a checkpoint of this tool."""
  try:
    fd, _ = _open_regular(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  except OSError as e:
    raise WorkdirError(f'{path} cannot be read ({e.strerror}); move it away and re-run') from None
  try:
    npz = _Npz(fd)
  finally:
    os.close(fd)
  with npz:
    meta, z = npz.meta, npz.z
    if meta is None:
      raise _not_a_checkpoint(path)
    if meta.get('run') != run_fp:
      logging.warning('not resuming from checkpoint %s: it was written by another run (fingerprint %s, this run '
                      '%s); recomputing', path, meta.get('run'), run_fp)
      return None
    if meta.get('fingerprint') != program_fp:
      logging.warning('not resuming from checkpoint %s: it is of another program; recomputing', path)
      return None
    try:
      leaves = [z[f's{i}'] for i in range(len(like_leaves))]
      trace = {k[2:]: z[k] for k in z.files if k.startswith('t_')}
    except Exception:  # noqa: BLE001
      raise _not_a_checkpoint(path) from None
  if any(np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype for a, b in zip(leaves, like_leaves)):
    logging.warning('not resuming from checkpoint %s: its arrays are of another program; recomputing', path)
    return None
  return leaves, trace, int(meta['chunks_done'])


def remove_checkpoint(path: Optional[str]) -> bool:
  """Removes the checkpoint at `path` if it is a regular file carrying this tool's checkpoint stamp
  (never a link, never a file it did not write: such a file is logged and kept; a folder of `path` that
  is a link is a WorkdirError). True if removed."""
  if not path:
    return False
  d, name = os.path.split(os.path.abspath(path))
  try:
    dfd = _open_dir(d)
  except FileNotFoundError:
    return False
  except OSError as e:
    raise _disk_error(path, e) from None
  try:
    try:
      fd, _ = _open_regular(path, os.O_RDONLY, dfd=dfd)
    except FileNotFoundError:
      return False
    except WorkdirError as e:  # a link, a FIFO, a folder: not the tool's
      logging.warning('keeping %s: %s', path, e)
      return False
    try:
      with _Npz(fd) as npz:
        ours = npz.meta is not None
    finally:
      os.close(fd)
    if not ours:
      logging.warning('keeping %s: it is named like a checkpoint but this tool did not write it', path)
      return False
    os.unlink(name, dir_fd=dfd)
    return True
  except OSError as e:
    raise _disk_error(path, e) from None
  finally:
    os.close(dfd)


# ---- several processes ------------------------------------------------------------------------------

_ERROR_BYTES = 4096


def on_every_process(fn: Callable, process_count: int, allgather: Optional[Callable] = None,
                     undo: Optional[Callable] = None):
  """Runs fn() on every process of a job and makes them agree before any of them goes on: if fn raises a
  UserError on some process, every process raises a UserError of the same class and message (the
  lowest failing process's), so that no process waits in a collective that another never reaches. Any
  other exception is re-raised where it happened and is a RuntimeError naming that process elsewhere.
  allgather(np.ndarray (n,) uint8) -> (process_count, n): jax.experimental.multihost_utils.process_allgather.
  undo(): called on a process where fn succeeded before it raises another's error (e.g. Workdir.unlock).
  One process: fn() itself."""
  if process_count <= 1:
    return fn()
  value, mine = None, None
  try:
    value = fn()
  except Exception as e:  # noqa: BLE001 - reported to every process, then re-raised here
    mine = e
  kind = '' if mine is None else (type(mine).__name__ if isinstance(mine, UserError) else '!bug')
  msg = b'' if mine is None else f'{kind}\n{mine}'.encode()[:_ERROR_BYTES - 4]
  buf = np.zeros(_ERROR_BYTES, np.uint8)
  buf[:4] = np.frombuffer(len(msg).to_bytes(4, 'little'), np.uint8)
  buf[4:4 + len(msg)] = np.frombuffer(msg, np.uint8)
  got = np.asarray(allgather(buf)).reshape(process_count, _ERROR_BYTES)
  for p in range(process_count):
    n = int.from_bytes(bytes(got[p, :4]), 'little')
    if not n:
      continue
    if mine is not None and got[p].tobytes() == buf.tobytes():
      raise mine
    if mine is None and undo is not None:
      undo()
    kind, _, text = bytes(got[p, 4:4 + n]).decode(errors='replace').partition('\n')
    if kind == '!bug':
      raise RuntimeError(f'process {p} failed ({text}); see its log')
    cls = next((c for c in _user_error_classes() if c.__name__ == kind), UserError)
    raise cls(text)
  if mine is not None:
    raise mine
  return value


def _user_error_classes():
  out, todo = [], [UserError]
  while todo:
    c = todo.pop()
    out.append(c)
    todo.extend(c.__subclasses__())
  return out


# ---- the workdir ------------------------------------------------------------------------------------

class Workdir:
  """A directory holding one experiment's config and results.

  path: --workdir as given (messages name it); root: its real path (resolved once: --workdir may be a
  link, nothing inside it may). defaults: the base config as a dict (config_lib.base_config().to_dict()),
  needed to fingerprint configs (open, check_config, load_results without a fingerprint)."""

  def __init__(self, path: str, defaults: Optional[Dict] = None):
    self.path = path
    self.defaults = defaults
    self.root = root = os.path.realpath(path)
    self.results_path = os.path.join(root, 'results.jsonl')
    self.config_path = os.path.join(root, 'config.json')
    self.summary_path = os.path.join(root, 'summary.json')
    self.marker_path = os.path.join(root, MARKER)
    self.lock_path = os.path.join(root, LOCK)
    self.params_dir = os.path.join(root, 'params')
    self.figures_dir = os.path.join(root, 'figures')
    self.ckpt_dir = os.path.join(root, 'checkpoints')
    self.trajectories_dir = os.path.join(root, 'trajectories')
    self._lock_fd = None

  def _err(self, what: str) -> WorkdirError:
    return WorkdirError(f'--workdir {self.path!r}: {what}')

  def _root_fd(self) -> int:
    try:
      return _open_dir(self.root)
    except WorkdirError as e:
      raise self._err(str(e)) from None
    except OSError as e:
      raise self._err(f'cannot be opened as a folder ({e.strerror})') from None

  # -- whose folder is it --
  def read_config(self) -> Optional[Dict]:
    """config.json as a dict, None if absent; WorkdirError naming it if it is not a config (or a link)."""
    try:
      data = read_regular(self.config_path)
    except WorkdirError as e:
      raise self._err(str(e)) from None
    except OSError as e:
      raise self._err(f'{self.config_path} is unreadable ({e.strerror}); use a new workdir') from None
    if data is None:
      return None
    try:
      cfg = json.loads(data)
    except ValueError as e:
      raise self._err(f'{self.config_path} is unreadable ({type(e).__name__}); use a new workdir') from None
    if not isinstance(cfg, dict):
      raise self._err(f'{self.config_path} is a JSON {type(cfg).__name__}, not a config; use a new workdir')
    return cfg

  def _marker_mode(self) -> Optional[int]:
    try:
      return os.lstat(self.marker_path).st_mode
    except FileNotFoundError:
      return None

  def is_workdir(self) -> bool:
    """True if this folder was made by the tool (MARKER, a regular file; or a config.json with provenance)."""
    mode = self._marker_mode()
    if mode is not None:
      return stat.S_ISREG(mode)
    try:
      cfg = self.read_config()
    except WorkdirError:
      return False
    return cfg is not None and 'provenance' in cfg

  def _check_ownership(self) -> bool:
    """False if the folder does not exist; True if it is empty or an overparam workdir; else WorkdirError.
    An entry of any name (a `.overparam.lock` too) makes a folder non-empty: only the marker makes it ours."""
    try:
      st = os.stat(self.root)
    except FileNotFoundError:
      return False
    except OSError as e:
      raise self._err(f'cannot be read ({e.strerror})') from None
    if not stat.S_ISDIR(st.st_mode):
      raise self._err('exists and is not a folder')
    try:
      entries = sorted(os.listdir(self.root))
    except OSError as e:
      raise self._err(f'cannot be read ({e.strerror})') from None
    if entries and not self.is_workdir():
      mode = self._marker_mode()
      why = (f'its {MARKER} is {_kind(mode)}, not the file the tool writes' if mode is not None else
             f'no {MARKER}; it holds {", ".join(entries[:3])}{", ..." if len(entries) > 3 else ""}')
      raise self._err(f'is a non-empty folder that is not an overparam workdir ({why}); use a new or empty '
                      'folder (the tool never writes into folders it did not make)')
    return True

  def _mark(self):
    """Creates the marker (exclusively, O_NOFOLLOW): the first file a run writes into its workdir."""
    dfd = self._root_fd()
    try:
      try:
        fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644, dir_fd=dfd)
      except FileExistsError:
        st = _lstat_at(dfd, MARKER)
        if st is not None and not stat.S_ISREG(st.st_mode):
          raise self._err(f'{self.marker_path} is {_kind(st.st_mode)}, not the file the tool writes; use a new '
                          'workdir') from None
        return
      try:
        _write_all(fd, MARKER_TEXT)
        os.fsync(fd)
      finally:
        os.close(fd)
      os.fsync(dfd)
    except OSError as e:
      raise _disk_error(self.marker_path, e) from None
    finally:
      os.close(dfd)

  # -- the lock --
  def lock(self):
    """Takes the exclusive lock for this process's lifetime; WorkdirError naming the holder's pid, or
    the lock file when it is a link, not a regular file, hard-linked elsewhere, or not the tool's."""
    dfd = self._root_fd()
    try:
      fd, st = _open_regular(self.lock_path, os.O_RDWR | os.O_CREAT, dfd=dfd)
    except WorkdirError as e:
      raise self._err(str(e)) from None
    except OSError as e:
      raise _disk_error(self.lock_path, e) from None
    finally:
      os.close(dfd)
    try:
      if st.st_nlink != 1:
        raise self._err(f'{self.lock_path} has {st.st_nlink} hard links (it is also another file); the tool never '
                        'writes into a file it did not make: remove it and re-run')
      if _read_only(st):
        raise self._err(f'cannot write {self.lock_path}: it is read-only; make it writable (chmod u+w) or remove it')
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'unknown'
        raise self._err(f'is in use by another launch (pid {holder}); wait for it to finish, or use another '
                        'workdir') from None
      held = os.pread(fd, 65, 0)
      if not re.fullmatch(rb'\d*\n?', held):
        raise self._err(f'{self.lock_path} is not the tool\'s lock file (it holds something other than a pid); '
                        'the tool never overwrites a file it did not make: move it away and re-run')
      try:
        os.ftruncate(fd, 0)
        _write_all(fd, f'{os.getpid()}\n'.encode())
      except OSError as e:
        raise _disk_error(self.lock_path, e) from None
    except BaseException:
      os.close(fd)
      raise
    self._lock_fd = fd

  def unlock(self):
    if self._lock_fd is not None:
      os.close(self._lock_fd)  # closing drops the flock; the file stays (it is the tool's, reused)
      self._lock_fd = None

  # -- opening for a run --
  def open(self, config: Dict, is_writer: bool = True) -> str:
    """Checks, marks, locks and prepares the workdir for a run of `config` (a resolved config dict, with
    its `inputs`: with_inputs); returns its fingerprint. Only the writer creates, locks or writes
    anything; the marker is written first, so a launch that fails at any later point leaves a workdir
    that the same command resumes."""
    fp = config_fingerprint(config, self.defaults)
    if not is_writer:
      if os.path.isdir(self.root):
        self.check_config(config)
      return fp
    self._check_ownership()
    try:
      os.makedirs(self.root, exist_ok=True)
    except OSError as e:
      raise self._err(str(_disk_error(self.root, e))) from None
    self._mark()
    self.lock()
    try:
      self._check_ownership()  # again under the lock: another launch may have written meanwhile
      self.check_config(config)
      self.prepare()
      self.write_config({**config, 'fingerprint': fp})
    except BaseException:
      self.unlock()
      raise
    return fp

  def check_config(self, config: Dict):
    """Refuses a workdir holding a different experiment, naming the fields (or the input file whose
    content changed); fields that cannot change a result never block. Results without a config.json
    are refused, naming config.json."""
    old = self.read_config()
    if old is None:
      if os.path.lexists(self.results_path) and os.lstat(self.results_path).st_size > 0:
        raise self._err(f'{self.results_path} holds results but {self.config_path} is missing, so they cannot '
                        'be shown to belong to this config; restore config.json or use a new workdir')
      return
    diff = config_differences(old, config, self.defaults)
    changed = [k[len(INPUTS_KEY) + 1:] for k in diff if k.startswith(INPUTS_KEY + '.')]
    if changed and all(k.startswith(INPUTS_KEY + '.') for k in diff):
      was, now = old.get(INPUTS_KEY) or {}, config.get(INPUTS_KEY) or {}
      f = changed[0]
      if was.get(f) is None:
        raise self._err(f'{self.config_path} does not record the content of the file config.{f} names (written by '
                        'an older version), so its results cannot be shown to come from that file; use a new workdir')
      raise self._err(f'config.{f} holds another file than the one its results were computed from (content '
                      f'{was[f]} then, {now.get(f) or "none"} now); restore that file or use a new workdir')
    if diff:
      raise self._err(f'holds a different config (fields differ: {", ".join(diff)}); use a new workdir')

  def prepare(self):
    """Creates the marker and the subfolders (none may be a link), removes this tool's stale temporaries,
    repairs a torn results line, and checks that every subfolder can be written."""
    if not os.path.isdir(self.root):
      try:
        os.makedirs(self.root, exist_ok=True)
      except OSError as e:
        raise self._err(str(_disk_error(self.root, e))) from None
    self._mark()
    dfd = self._root_fd()
    try:
      fds = {'': dfd}
      try:
        for s in SUBDIRS:
          fds[s] = self._subdir_fd(dfd, s)
        self._remove_own_temporaries(fds)
        self.repair()
        for s, fd in fds.items():
          self._probe(fd, os.path.join(self.root, s) if s else self.root)
      finally:
        for s, fd in fds.items():
          if s:
            os.close(fd)
    finally:
      os.close(dfd)

  def _subdir_fd(self, dfd: int, name: str) -> int:
    d = os.path.join(self.root, name)
    try:
      os.mkdir(name, 0o755, dir_fd=dfd)
    except FileExistsError:
      pass
    except OSError as e:
      raise _disk_error(d, e) from None
    st = _lstat_at(dfd, name)
    if st is not None and stat.S_ISLNK(st.st_mode):
      raise self._err(str(_link_error(d)))
    if st is None or not stat.S_ISDIR(st.st_mode):
      raise self._err(f'{d} is not a folder; move it away and re-run')
    try:
      return _open_dir(d, dfd)
    except WorkdirError as e:
      raise self._err(str(e)) from None
    except OSError as e:
      raise _disk_error(d, e) from None

  @staticmethod
  def _probe(fd: int, d: str):
    name = f'{PROBE}{os.getpid()}'
    try:
      pfd = _create_exclusive(fd, name, os.path.join(d, name), stale_ok=True)
      try:
        _write_all(pfd, b'ok')
      finally:
        os.close(pfd)
      os.unlink(name, dir_fd=fd)
    except OSError as e:
      raise _disk_error(d, e) from None

  @staticmethod
  def _remove_own_temporaries(fds: Dict[str, int]):
    """Temporaries a killed run of this tool left (under the lock, no other writer is live): only regular
    files whose names match TMP_RE or this tool's probe, in the workdir and its SUBDIRS (not deeper),
    through folder fds opened without following links."""
    for fd in fds.values():
      for f in os.listdir(fd):
        if TMP_RE.match(f) or PROBE_RE.match(f):
          st = _lstat_at(fd, f)
          if st is not None and stat.S_ISREG(st.st_mode):
            os.unlink(f, dir_fd=fd)

  def write_config(self, config: Dict):
    write_json_atomic(self.config_path, config)

  def remove_checkpoints(self, names: Sequence[str]):
    """Removes the checkpoints named (plain file names in checkpoints/ that this config writes), each only
    if this tool wrote it (remove_checkpoint)."""
    for n in names:
      remove_checkpoint(os.path.join(self.ckpt_dir, os.path.basename(n)))

  # -- rows --
  def row_rules(self, fingerprint: Optional[str] = None) -> Optional[RowRules]:
    """The RowRules of this workdir from config.json (None when there is no config.json). The fingerprint
    rows must carry: `fingerprint` if given (a resume: the current config's), else the one config.json
    records (the run that wrote it computed it; recomputing it with today's defaults would differ once
    an algorithm's registry entry changed), else, for a config.json of an older version, its fingerprint
    recomputed with the defaults."""
    cfg = self.read_config()
    if cfg is None:
      return None
    if fingerprint is None:
      if isinstance(cfg.get('fingerprint'), str):
        fingerprint = cfg['fingerprint']
      elif self.defaults is not None:
        fingerprint = config_fingerprint(cfg, self.defaults)
      else:
        raise self._err(f'{self.config_path} records no fingerprint (written by an older version); '
                        'read it with Workdir(path, defaults=config_lib.base_config().to_dict())')
    return row_rules(cfg, fingerprint, self.config_path)

  def load_results(self, fingerprint: Optional[str] = None) -> List[Dict]:
    """All rows, one per cell, each checked against config.json (check_row); a torn last line (no
    newline: a crash mid-append) is dropped. A line that is not a row of this workdir, or a second row
    of a cell, is a WorkdirError naming the file and line. fingerprint: the one rows must carry (a
    resume passes the current config's); default: config.json's (row_rules)."""
    try:
      data = read_regular(self.results_path)
    except WorkdirError as e:
      raise self._err(str(e)) from None
    except OSError as e:
      raise self._err(f'{self.results_path} cannot be read ({e.strerror})') from None
    if not data:
      return []
    rules = self.row_rules(fingerprint)
    if rules is None:
      raise self._err(f'{self.results_path} holds results but {self.config_path} is missing, so they cannot '
                      'be shown to belong to a config; restore config.json or use a new workdir')
    lines = data.split(b'\n')
    if lines and lines[-1].strip():
      lines = lines[:-1]  # torn by a crash mid-write: the cell is recomputed
    rows, seen = [], {}
    for i, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError:
        row, problem = None, 'not valid JSON'
      else:
        problem = check_row(row, rules)
      if problem is None and cell_id(row) in seen:
        problem = f'a second row of the cell of line {seen[cell_id(row)]}'
      if problem:
        raise self._err(f'{self.results_path} line {i} is not a result row of this config ({problem}); '
                        'remove that line or use a new workdir')
      seen[cell_id(row)] = i
      rows.append(row)
    return rows

  def _results_fd(self, flags: int) -> int:
    """results.jsonl opened with O_NOFOLLOW: a regular file with no other hard link, else WorkdirError."""
    try:
      fd, st = _open_regular(self.results_path, flags)
    except WorkdirError as e:
      raise self._err(str(e)) from None
    if st.st_nlink != 1:
      os.close(fd)
      raise self._err(f'{self.results_path} has {st.st_nlink} hard links (it is also another file); the tool '
                      'never writes into a file it did not make: copy it (cp, not ln) and re-run')
    if _read_only(st):
      os.close(fd)
      raise self._err(f'cannot write {self.results_path}: it is read-only; make it writable (chmod u+w) to resume')
    return fd

  def repair(self):
    """Truncates a torn last line (a crash inside an append) so the log holds complete lines only."""
    try:
      fd = self._results_fd(os.O_RDWR)
    except FileNotFoundError:
      return
    except OSError as e:
      raise _disk_error(self.results_path, e) from None
    try:
      size = os.fstat(fd).st_size
      if size:
        tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
        if not tail.endswith(b'\n'):
          data = tail if size <= (1 << 20) else os.pread(fd, size, 0)
          os.ftruncate(fd, data.rfind(b'\n') + 1)
          os.fsync(fd)
    except OSError as e:
      raise _disk_error(self.results_path, e) from None
    finally:
      os.close(fd)

  def append_results(self, rows: Iterable[Dict]):
    """Appends complete lines (every byte written), then fsync. A disk error leaves at most a torn
    last line, which the next run truncates."""
    text = ''.join(json.dumps(r, sort_keys=True, allow_nan=False) + '\n' for r in rows)
    if not text:
      return
    try:
      fd = self._results_fd(os.O_WRONLY | os.O_APPEND | os.O_CREAT)
      try:
        _write_all(fd, text.encode())
        os.fsync(fd)
      finally:
        os.close(fd)
    except OSError as e:
      raise _disk_error(self.results_path, e) from None
