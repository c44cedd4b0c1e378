"""The workdir API: run a sweep into a workdir exactly as launch.py runs it, and load config files.

  summary = overparam.run('configs/default.py:quick', 'workdirs/quick')
  c = overparam.load_config('configs/default.py:quick'); c.steps = 500; overparam.run(c, 'workdirs/mine')

run() is experiments.run after the launcher's process set-up (float64, compilation cache). It raises
overparam.errors.ConfigError / TargetError / WorkdirError for the user's input, as the launcher does
(there they are one `error:` line); anything else is a bug. One tensor in memory, without a workdir, is
overparam.decompose (overparam/decomposition.py).

Threads: run() may be called from several threads at once (the registry and the compilation-cache
settings take locks; figures are drawn without pyplot's global state); two runs into one workdir
are refused by the workdir's lock as two launches are.

float64: config.x64 turns on `jax_enable_x64` for the whole process, as the launcher does. JAX reads
that switch when it creates arrays: arrays made before it was turned on stay float32, and it is never
turned off again here. Set it first thing in a notebook (`jax.config.update('jax_enable_x64', True)`)
when you mix your own JAX arrays with x64 runs.
"""

import importlib.util
import os
from typing import Dict, Union

import jax
import ml_collections

from overparam import compile_cache, config_lib, experiments
from overparam.errors import ConfigError


def run(config: Union[ml_collections.ConfigDict, str], workdir: str, *,
        compilation_cache: bool = True, figures: bool = True) -> Dict:
  """Runs (or resumes) the sweep `config` into `workdir` as `launch.py --config=... --workdir=...`
  does (single process); returns the summary (the contents of summary.json).

  config: a ConfigDict (e.g. from load_config) or a config file spec 'configs/X.py[:variant]'.
  compilation_cache: the persistent compilation cache (overparam/compile_cache.py), process-wide.
    While it is on, the sweep also drops JAX's in-memory compilation caches after each program
    (jax.clear_caches, process-wide; memory.release_free_heap): the caller's jitted functions
    then reload from the persistent cache on their next call.
  figures: False skips drawing WORKDIR/figures/ (`launch.py --plot_only` draws them later).
  Raises ConfigError, TargetError or WorkdirError as the launcher would report them.
  """
  if isinstance(config, str):
    config = load_config(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'config must be an ml_collections.ConfigDict or a config file path, got '
                      f'{type(config).__name__}')
  if config.get('distributed'):
    raise ConfigError('config.distributed: multi-process runs start from launch.py (one process per host)')
  config_lib.validate(config)  # as launch.py: before anything is written
  compile_cache.configure(compilation_cache)
  if config.get('x64'):
    jax.config.update('jax_enable_x64', True)  # process-wide; see the module docstring
  return experiments.run(config, workdir, figures=figures)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of a config file, as `--config=spec` gives it: 'path.py' calls its get_config(),
  'path.py:arg' calls get_config('arg') (e.g. 'configs/default.py:quick'). ConfigError if the file
  is missing or its get_config fails."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'config: no such config file {path!r}')
  try:
    module_spec = importlib.util.spec_from_file_location('overparam_config_file', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - a broken config file is the user's to fix, as in launch.py
    raise ConfigError(f'config: cannot load {spec!r} ({type(e).__name__}: {e})') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'config: {spec!r} get_config() returned {type(config).__name__}, not a ConfigDict')
  return config
