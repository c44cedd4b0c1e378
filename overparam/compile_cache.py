"""JAX's persistent compilation cache, on by default for launch.py and the Python API.

A sweep compiles one XLA program per (algorithm, order, d, width bucket) plus the small eager
operations that build targets; with the cache a later launch with the same shapes (a resume, a new
workdir, more figures) loads those executables from disk instead of compiling them. A cached
executable is the serialized result of the same compilation, so results are bit-identical with
and without the cache (tests/test_cache.py).

Where: `JAX_COMPILATION_CACHE_DIR` (or a directory already set with
`jax.config.update('jax_compilation_cache_dir', ...)`) when set, else
`$XDG_CACHE_HOME/overparam/jax` (default `~/.cache/overparam/jax`). The cache is never evicted;
deleting the directory at any time is safe (the next launch recompiles). It is trusted code:
do not point it at a directory others can write. Off: `launch.py --compilation_cache=false` or
`overparam.decompose(..., compilation_cache=False)` / `overparam.run(..., compilation_cache=False)`.

Every compiled program is cached, however small (jax's defaults skip programs that compile in
under 1 s; most of this project's are smaller, and together they are most of a launch's compile
time). The settings are process-wide JAX settings.
"""

import os
import threading
from typing import Optional

from absl import flags
from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache as cc

_LOCK = threading.Lock()

ENV = 'JAX_COMPILATION_CACHE_DIR'
FLAG_HELP = ('Use JAX\'s persistent compilation cache (a re-launch with the same shapes loads compiled '
             'programs from disk; results are identical). Directory: $JAX_COMPILATION_CACHE_DIR, else '
             '$XDG_CACHE_HOME/overparam/jax (~/.cache/overparam/jax).')


def default_dir() -> str:
  """$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/overparam/jax, else ~/.cache/overparam/jax."""
  env = os.environ.get(ENV)
  if env:
    return env
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'overparam', 'jax')


def define_flag():
  """The launcher's --compilation_cache flag (absl), default true."""
  return flags.DEFINE_bool('compilation_cache', True, FLAG_HELP)


def is_on() -> bool:
  """Whether JAX's persistent compilation cache is on in this process (a directory and the switch)."""
  return bool(jax.config.jax_compilation_cache_dir) and bool(jax.config.jax_enable_compilation_cache)


def configure(enabled: bool = True, path: Optional[str] = None) -> Optional[str]:
  """Turns the persistent cache on (at `path`; default: the directory JAX already has configured,
  else default_dir()) or off, for this process. Returns the directory in use, or None when off.

  Safe to call repeatedly, from several threads, and after JAX has compiled something: a change of
  directory or of on/off resets JAX's cache handle so that it takes effect for the next compilation.
  """
  with _LOCK:
    return _configure(enabled, path)


def _configure(enabled: bool, path: Optional[str]) -> Optional[str]:
  current = jax.config.jax_compilation_cache_dir
  was_on = bool(current) and jax.config.jax_enable_compilation_cache
  if not enabled:
    if was_on:
      jax.config.update('jax_enable_compilation_cache', False)
      cc.reset_cache()
    return None
  path = path or current or default_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # a read-only home: run without the cache rather than fail
    logging.warning('compilation cache off: cannot create %s (%s)', path, e)
    return _configure(False, None)
  # Cache every program: jax skips those that compile in < 1 s by default, which is most of ours.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  if not was_on or current != path:
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_enable_compilation_cache', True)
    cc.reset_cache()
  return path
