"""The workdir store: config.json, results.jsonl, params/*.npz, summary.json, checkpoints.

Every file is written whole or not at all (temporary file, fsync, rename); results.jsonl grows by
appends of complete lines in one write followed by fsync, and a torn last line (a crash inside the
write) is dropped on load, so a re-run recomputes that cell.
"""

import json
import math
import os
from typing import Dict, Iterable, List

import numpy as np

from overparam.errors import WorkdirError  # noqa: F401 - re-exported: results.WorkdirError

# alpha: the Chizat alpha of alpha-scaled algorithms' rows (gd; config.alphas makes it a cell axis);
# None for other algorithms. Rows of a sweep with other cell axes (config.axes) also carry `axes`,
# the names of those fields, and each one's value under its dotted name.
CELL_KEYS = ('algorithm', 'order', 'dim', 'rank', 'width', 'seed', 'alpha')
# config.json fields that record the environment rather than the experiment.
VOLATILE_KEYS = ('provenance',)


def cell_id(row: Dict) -> tuple:
  """The cell a row belongs to: CELL_KEYS, then (name, value) of each field in row['axes']."""
  return tuple(row.get(k) for k in CELL_KEYS) + tuple((k, row.get(k)) for k in row.get('axes') or ())


def _fsync_dir(path: str):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_atomic(path: str, data: bytes):
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_json_atomic(path: str, obj):
  write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + '\n').encode())


def save_npz_atomic(path: str, **arrays):
  tmp = f'{path}.tmp.{os.getpid()}.npz'
  np.savez(tmp, **arrays)
  with open(tmp, 'rb') as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)


def clean_number(x):
  """float for JSON; None for nan/inf (a diverged number is never reported as a number)."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


class Workdir:
  """A directory holding one experiment's config and results."""

  def __init__(self, path: str):
    self.path = path
    self.results_path = os.path.join(path, 'results.jsonl')
    self.config_path = os.path.join(path, 'config.json')
    self.summary_path = os.path.join(path, 'summary.json')
    self.params_dir = os.path.join(path, 'params')
    self.figures_dir = os.path.join(path, 'figures')
    self.ckpt_dir = os.path.join(path, 'checkpoints')
    self.trajectories_dir = os.path.join(path, 'trajectories')

  def prepare(self):
    """Creates the directories; raises WorkdirError if the path cannot be written."""
    try:
      for d in (self.path, self.params_dir, self.figures_dir, self.ckpt_dir, self.trajectories_dir):
        os.makedirs(d, exist_ok=True)
      self._remove_stale_temporaries()
      self.repair()
      probe = os.path.join(self.path, f'.write_probe.{os.getpid()}')
      with open(probe, 'w') as f:
        f.write('ok')
      os.remove(probe)
    except OSError as e:
      raise WorkdirError(f'--workdir {self.path!r} cannot be written ({e.strerror or e})') from None

  def _remove_stale_temporaries(self):
    """Temporary files left by a killed run (never the files they were meant to replace)."""
    for dirpath, _, files in os.walk(self.path):
      for f in files:
        if '.tmp.' in f or f.startswith('.write_probe.'):
          os.remove(os.path.join(dirpath, f))

  def check_config(self, config: Dict):
    """Refuses a workdir holding a different experiment; volatile provenance is ignored."""
    if not os.path.exists(self.config_path):
      return
    try:
      with open(self.config_path) as f:
        old = json.load(f)
    except (OSError, ValueError):
      raise WorkdirError(f'--workdir {self.path!r}: config.json is unreadable; use a new workdir') from None
    strip = lambda c: {k: v for k, v in c.items() if k not in VOLATILE_KEYS}
    config = json.loads(json.dumps(config))  # tuples -> lists, as stored
    if strip(old) != strip(config):
      diff = sorted(k for k in set(old) | set(config) if k not in VOLATILE_KEYS and old.get(k) != config.get(k))
      raise WorkdirError(f'--workdir {self.path!r} holds a different config (fields differ: '
                         f'{", ".join(diff)}); use a new workdir')

  def write_config(self, config: Dict):
    write_json_atomic(self.config_path, config)

  def load_results(self) -> List[Dict]:
    """All complete rows, one per cell (the first wins); a torn trailing line is dropped."""
    if not os.path.exists(self.results_path):
      return []
    rows, seen = [], set()
    with open(self.results_path, 'rb') as f:
      for line in f.read().split(b'\n'):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except ValueError:
          continue  # torn by a crash mid-write: the cell is recomputed
        if cell_id(row) not in seen:
          seen.add(cell_id(row))
          rows.append(row)
    return rows

  def repair(self):
    """Truncates a torn last line (a crash inside an append) so the log holds complete lines only."""
    if not os.path.exists(self.results_path):
      return
    with open(self.results_path, 'rb+') as f:
      data = f.read()
      if data and not data.endswith(b'\n'):
        f.truncate(data.rfind(b'\n') + 1)
        f.flush()
        os.fsync(f.fileno())

  def append_results(self, rows: Iterable[Dict]):
    """Appends complete lines in one write, then fsync."""
    text = ''.join(json.dumps(r, sort_keys=True, allow_nan=False) + '\n' for r in rows)
    if not text:
      return
    fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, text.encode())
      os.fsync(fd)
    finally:
      os.close(fd)
