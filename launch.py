r"""Runs an overparam experiment.

  python launch.py --config=configs/default.py --workdir=workdirs/default [--config.FIELD=VALUE ...]
  python launch.py --workdir=workdirs/default --plot_only   # redraw figures/ from the workdir

Re-running the same command into the same workdir resumes: only missing (algorithm, d, width,
seed) cells are computed. Errors that are the user's to fix (overparam.errors.UserError) end with one
`error: ...` line on stderr and exit status 2; Ctrl-C with a line saying how to resume and exit status
130; anything else is a bug and keeps its traceback (exit status 1). README, "The workdir": what the
tool writes and may delete, and its lock.
"""

import difflib
import os
import re
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from overparam import compile_cache
from overparam.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py); fields can be overridden with '
    '--config.FIELD=VALUE.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for config.json, results.jsonl, params/, '
                               'summary.json and figures/.')
_PLOT_ONLY = flags.DEFINE_bool('plot_only', False, 'Redraw WORKDIR/figures/*.png from WORKDIR/config.json and '
                                'results.jsonl without computing anything (no --config needed).')
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the traceback of an error instead of one line.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0 '
                                   '(with config.distributed; omit on Slurm/TPU pods, detected automatically).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: this process\'s index.')
_COMPILATION_CACHE = compile_cache.define_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    _main()
  except UserError as e:  # ConfigError, TargetError, WorkdirError: the user's to fix; bugs keep their traceback
    if _DEBUG.value:
      raise
    fail(str(e))
  except KeyboardInterrupt:
    print(f'interrupted: nothing finished is lost; re-run the same command to resume from --workdir '
          f'{_WORKDIR.value!r}', file=sys.stderr)
    sys.exit(130)


def _main():
  if _PLOT_ONLY.value:
    if not _WORKDIR.value:
      fail('--workdir is required')
    from overparam import experiments  # noqa: PLC0415
    for p in experiments.plot_only(_WORKDIR.value):
      logging.info('wrote %s', p)
    return
  config = _load_config()
  if config is None:
    fail('--config is required, e.g. --config=configs/default.py')
  if not _WORKDIR.value:
    fail('--workdir is required')
  from overparam import config_lib  # noqa: PLC0415
  config_lib.validate(config)  # before jax is configured, before anything is written
  _check_distributed(config.distributed)
  import jax  # noqa: PLC0415 - configure before any backend initializes
  compile_cache.configure(_COMPILATION_CACHE.value)
  if config.x64:
    jax.config.update('jax_enable_x64', True)
  if config.distributed:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  from overparam import experiments  # noqa: PLC0415
  summary = experiments.run(config, _WORKDIR.value)
  for t in summary['thresholds']:
    logging.info('m* %s', t)


def _load_config():
  try:
    config = _CONFIG.value
    if config is not None:
      config.order  # a config file that failed to load raises here, not at parse time
    return config
  except Exception as e:  # noqa: BLE001 - ml_collections reports a bad config file this way
    if _DEBUG.value:
      raise
    detail = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    fail(f'--config: cannot load {getattr(flags.FLAGS["config"], "config_filename", "")!r} ({detail})')


# Environments in which jax.distributed.initialize finds the coordinator by itself.
_AUTO_CLUSTER_ENV = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'CLOUD_TPU_TASK_ID', 'OMPI_COMM_WORLD_SIZE')


def _check_distributed(distributed: bool):
  """One-line errors for multi-process flags that cannot work (checked before jax starts)."""
  given = [f'--{f.name}' for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None]
  if not distributed:
    if given:
      fail(f'{", ".join(given)} only apply with --config.distributed=True')
    return
  auto = any(k in os.environ for k in _AUTO_CLUSTER_ENV)
  if not auto and (_COORDINATOR.value is None or _NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
    fail('--config.distributed=True needs --coordinator_address=HOST:PORT, --num_processes and --process_id '
         f'(outside Slurm/TPU/MPI, where they are detected); missing: '
         f'{", ".join(n for n, f in (("--coordinator_address", _COORDINATOR), ("--num_processes", _NUM_PROCESSES), ("--process_id", _PROCESS_ID)) if f.value is None)}')
  if _NUM_PROCESSES.value is not None and _NUM_PROCESSES.value < 1:
    fail(f'--num_processes must be >= 1, got {_NUM_PROCESSES.value}')
  if _PROCESS_ID.value is not None and not (
      0 <= _PROCESS_ID.value < (_NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else 2 ** 31)):
    fail(f'--process_id must be in [0, --num_processes={_NUM_PROCESSES.value}), got {_PROCESS_ID.value}')
  if _COORDINATOR.value is not None and not re.fullmatch(r'[^:\s]+:\d{1,5}', _COORDINATOR.value):
    fail(f'--coordinator_address must be HOST:PORT, got {_COORDINATOR.value!r}')


def fail(msg: str):
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


def _unknown_override(config, argv) -> Optional[str]:
  """The first --config.A.B override that names no field of the loaded config, as an error message."""
  for tok in argv:
    if not tok.startswith('--config.'):
      continue
    path = tok[len('--config.'):].split('=', 1)[0]
    node, seen = config, 'config'
    for part in path.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        near = difflib.get_close_matches(part, keys, n=1)
        kind = 'field' if isinstance(node, ml_collections.ConfigDict) else 'sub-field (it is not a sub-config)'
        return (f'{seen} has no {kind} {part!r}' + (f' (did you mean {seen}.{near[0]}?)' if near else '')
                + f', in {tok.split("=", 1)[0]}')
      node, seen = node[part], f'{seen}.{part}'
  return None


def _precheck_overrides(argv) -> Optional[str]:
  """Loads the config file alone (a private FlagValues) and checks every --config.A.B override names
  a field of it; returns the error message, or None (also when the file itself does not load: the
  real parse reports that)."""
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  if not overrides:
    return None
  fv = flags.FlagValues()
  cf = config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=False)
  plain = [argv[0]] + [a for a in argv[1:] if not a.startswith('--config.')]
  saved, sys.argv = sys.argv, plain  # config_flags reads overrides from sys.argv itself
  try:
    fv(plain, known_only=True)
    config = cf.value
  except Exception:  # noqa: BLE001 - reported by the real parse below
    return None
  finally:
    sys.argv = saved
  return None if config is None else _unknown_override(config, overrides)


def parse_flags(argv):
  """absl parsing, but a bad flag or config override is one `error:` line (no traceback).

  An override naming no field of the config is found by looking it up in the config itself."""
  msg = _precheck_overrides(argv)
  if msg:
    fail(msg)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except Exception as e:  # noqa: BLE001 - a config file's own error surfaces while the flags are parsed
    if '--debug' in argv:
      raise
    first = (str(e).strip().splitlines() or [''])[0]
    fail(f'--config file or --config.FIELD override is invalid ({type(e).__name__}: {first})')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
