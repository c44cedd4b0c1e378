r"""Runs an overparam experiment.

  python launch.py --config=configs/default.py --workdir=workdirs/default [--config.FIELD=VALUE ...]
  python launch.py --workdir=workdirs/default --plot_only   # redraw figures/ from the workdir

Re-running the same command into the same workdir resumes: only missing (algorithm, d, width,
seed) cells are computed. Errors end with one `error: ...` line on stderr and exit status 2.
"""

import re
import sys

from absl import app
from absl import flags
from absl import logging
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
  if _PLOT_ONLY.value:
    if not _WORKDIR.value:
      fail('--workdir is required')
    from overparam import experiments  # noqa: PLC0415
    try:
      paths = experiments.plot_only(_WORKDIR.value)
    except UserError as e:
      if _DEBUG.value:
        raise
      fail(str(e))
    for p in paths:
      logging.info('wrote %s', p)
    return
  try:
    config = _CONFIG.value
    if config is not None:
      config.order  # a config file that failed to load raises here, not at parse time
  except Exception as e:  # noqa: BLE001 - ml_collections reports a bad config file this way
    if _DEBUG.value:
      raise
    detail = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    fail(f'--config: cannot load {getattr(flags.FLAGS["config"], "config_filename", "")!r} ({detail})')
  if config is None:
    fail('--config is required, e.g. --config=configs/default.py')
  if not _WORKDIR.value:
    fail('--workdir is required')
  import jax  # noqa: PLC0415 - configure before any backend initializes
  compile_cache.configure(_COMPILATION_CACHE.value)
  if config.x64:
    jax.config.update('jax_enable_x64', True)
  if config.distributed:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  from overparam import experiments  # noqa: PLC0415
  try:
    summary = experiments.run(config, _WORKDIR.value)
  except UserError as e:  # ConfigError, TargetError, WorkdirError: the user's to fix; bugs keep their traceback
    if _DEBUG.value:
      raise
    fail(str(e))
  for t in summary['thresholds']:
    logging.info('m* %s', t)


def fail(msg: str):
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing, but a bad flag or config override is one `error:` line (no traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except Exception as e:  # noqa: BLE001 - config files and overrides are parsed with the flags
    if '--debug' in argv:
      raise
    msg = str(e).replace("\\'", "'").replace('\\n', ' ').replace('\n', ' ').strip('\'" ')
    unknown = re.match(r"(\w+)'? Did you mean \"(\w+)\"", msg)
    if isinstance(e, AttributeError):  # a typo in --config.FIELD
      fail(f'config has no field {unknown.group(1)!r} (did you mean {unknown.group(2)!r}?)' if unknown
           else f'config has no field {msg!r}')
    fail(f'--config file or --config.FIELD override is invalid ({type(e).__name__}: {msg})')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
