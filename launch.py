r"""Runs an overparam experiment.

  python launch.py --config=configs/default.py --workdir=workdirs/default [--config.FIELD=VALUE ...]
  python launch.py --workdir=workdirs/default --plot_only   # redraw figures/ from the workdir

Re-running the same command into the same workdir resumes: only missing (algorithm, d, width,
seed) cells are computed. Errors that are the user's to fix (overparam.errors.UserError) end with one
`error: ...` line on stderr and exit status 2; Ctrl-C with a line saying how to resume and exit status
130; anything else is a bug and keeps its traceback (exit status 1). README, "The workdir": what the
tool writes and may delete, and its lock.
"""

import ast
import difflib
import logging as std_logging
import math
import os
import re
import sys
import time
from typing import Optional


def _lapack_threads():
  """OpenBLAS threads for LAPACK (lazy_exact's QR), set before numpy and jax load: every core, unless
  OPENBLAS_NUM_THREADS is set.

  Unset, the OpenBLAS behind jax's LAPACK calls ran them on one thread (measured: 1.8-2.0 s for a
  geqrf that takes 1.0-1.1 s on both threads of a 2-core machine at load ~1). The count is fixed, not
  chosen from the load: LAPACK's last bits depend on it (a 1- and a 2-thread geqrf differ by ~1e-13),
  and two launches must give identical numbers. On cores busy with other work,
  OPENBLAS_NUM_THREADS=1 can be faster.
  """
  os.environ.setdefault('OPENBLAS_NUM_THREADS', str(os.cpu_count() or 1))


_lapack_threads()

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

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
_COORDINATOR_TIMEOUT = flags.DEFINE_integer(
    'coordinator_timeout_s', 300, 'Multi-process: seconds to wait for the job to assemble (process 0 for the '
    'others, the others for process 0) before giving up with an error.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Log every phase and every chunk of every program (default: one line '
                             'per program, and progress every 10 s of a long one).')
_COMPILATION_CACHE = compile_cache.define_flag()
_HELP_FLAGS = ('--help', '-help', '--helpfull', '-helpfull', '--helpshort', '-helpshort', '-h', '-?')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _VERBOSE.value:  # jax's own INFO lines (backends, cache resets) only with --verbose
    std_logging.getLogger('jax').setLevel(std_logging.WARNING)
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
    paths = experiments.plot_only(_WORKDIR.value)
    print(f'figures ({os.path.join(_WORKDIR.value, "figures")}): ' + ', '.join(os.path.basename(p) for p in paths))
    return
  config = _load_config()
  if config is None:
    fail('--config is required, e.g. --config=configs/default.py')
  if not _WORKDIR.value:
    fail('--workdir is required')
  from overparam import config_lib  # noqa: PLC0415
  config_lib.validate(config)  # before jax is configured, before anything is written
  unused = config_lib.unused_given_fields(config, [f.split('.', 1)[1] for _, f, _ in _override_tokens(sys.argv)])
  if unused:
    logging.warning('set but unused (no algorithm in config.algorithms reads them): %s', ', '.join(unused))
  _check_distributed(config.distributed)
  import jax  # noqa: PLC0415 - configure before any backend initializes
  compile_cache.configure(_COMPILATION_CACHE.value)
  if config.x64:
    jax.config.update('jax_enable_x64', True)
  if config.distributed:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    from overparam import distributed  # noqa: PLC0415 - imports jax, after its configuration
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           timeout_s=_COORDINATOR_TIMEOUT.value)
  from overparam import experiments, registry, report  # noqa: PLC0415
  t0 = time.time()
  summary = experiments.run(config, _WORKDIR.value, verbose=_VERBOSE.value)
  if jax.process_index() == 0:
    scale_free = {a: registry.get(a).scale_free for a in config.algorithms}
    print(report.end_of_run(_WORKDIR.value, summary, experiments.load_rows(_WORKDIR.value), time.time() - t0,
                            scale_free), flush=True)


def _load_config():
  try:
    config = _CONFIG.value
    if config is not None:
      problem = _not_a_config(config, getattr(flags.FLAGS['config'], 'config_filename', ''))
      if problem:
        fail(problem)
      config.order  # a config file that failed to load raises here, not at parse time
    return config
  except Exception as e:  # noqa: BLE001 - ml_collections reports a bad config file this way
    if _DEBUG.value:
      raise
    detail = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    fail(f'--config: cannot load {getattr(flags.FLAGS["config"], "config_filename", "")!r} ({detail})')


def _not_a_config(config, filename: str) -> Optional[str]:
  """The error message when a config file's get_config() returned something else than a ConfigDict."""
  if isinstance(config, ml_collections.ConfigDict):
    return None
  name = filename or '--config'
  return (f'--config: get_config() in {name!r} returned a {type(config).__name__}, not an ml_collections.ConfigDict; '
          'start from config_lib.base_config() (or wrap a dict: ml_collections.ConfigDict({...}))')


# Environments in which jax.distributed.initialize finds the coordinator by itself.
_AUTO_CLUSTER_ENV = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'CLOUD_TPU_TASK_ID', 'OMPI_COMM_WORLD_SIZE')


def _check_distributed(distributed: bool):
  """One-line errors for multi-process flags that cannot work (checked before jax starts)."""
  given = [f'--{f.name}' for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None]
  given += ['--coordinator_timeout_s'] if _COORDINATOR_TIMEOUT.present else []
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
  if _COORDINATOR_TIMEOUT.value < 1:
    fail(f'--coordinator_timeout_s must be an integer >= 1, got {_COORDINATOR_TIMEOUT.value}')


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
  if config is None:
    return None
  return _not_a_config(config, getattr(fv['config'], 'config_filename', '')) or _unknown_override(config, overrides)


def _override_tokens(argv):
  """(index, field name, has '=') of every --config.FIELD / --noconfig.FIELD token before a `--`."""
  for i, tok in enumerate(argv):
    if tok == '--':
      return
    flag, eq, _ = tok.lstrip('-').partition('=')
    if tok.startswith('-') and (flag.startswith('config.') or flag.startswith('noconfig.')):
      yield i, flag[2:] if flag.startswith('no') else flag, bool(eq)


_NON_FINITE = {'nan': math.nan, 'inf': math.inf, 'infinity': math.inf}


def _numbers(text: str):
  """`text` as a tuple of Python literals in which nan, inf and infinity (any case) are floats, or None
  if it is not one (the literals ml_collections parses, plus the non-finite floats it cannot)."""
  try:
    tree = ast.parse(text.strip(), mode='eval')
  except SyntaxError:
    return None

  class Floats(ast.NodeTransformer):
    def visit_Name(self, node):  # noqa: N802 - ast API
      if node.id.lower() in _NON_FINITE:
        return ast.copy_location(ast.Constant(_NON_FINITE[node.id.lower()]), node)
      raise ValueError(node.id)
  try:
    value = ast.literal_eval(ast.fix_missing_locations(Floats().visit(tree)))
  except (ValueError, TypeError, SyntaxError):
    return None
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _raw_override(argv, name: str) -> Optional[str]:
  """The text of the last --NAME on the command line (as --NAME=TEXT or --NAME TEXT)."""
  got = None
  for i, flag, eq in _override_tokens(argv):
    if flag == name and not argv[i].lstrip('-').startswith('no'):
      got = argv[i].partition('=')[2] if eq else (argv[i + 1] if i + 1 < len(argv) else None)
  return got


def _fix_tuple_overrides(config, argv) -> Optional[str]:
  """Tuple overrides, read the way scalar ones are. ml_collections appends every occurrence of a tuple
  field (`--config.dims='(6,)' --config.dims='(8,)'` gave d = 6 and 8) while absl keeps a scalar's last
  value: here the last occurrence wins for tuples too. And ml_collections keeps a text that
  ast.literal_eval cannot read as one string ('(nan,1.0,1.0)' became ('(nan,1.0,1.0)',)): such a text is
  read with nan/inf as floats (validation then names the field and what it accepts), or refused naming
  the flag. Sets the fields of `config`; returns an error message, or None."""
  for name in sorted({n for _, n, _ in _override_tokens(argv)}):
    if name not in flags.FLAGS or not isinstance(flags.FLAGS[name].value, (list, tuple)):
      continue
    text = _raw_override(argv, name)
    if text is None:
      continue
    try:
      value = tuple_parser.TupleParser().parse(text)
    except ValueError as e:
      return f'--{name}={text!r}: {e}'
    if any(isinstance(v, str) for v in value):
      numbers = _numbers(text)
      if numbers is not None and not any(isinstance(v, str) for v in numbers):
        value = numbers
      elif value == (text,) and re.search(r'^\s*[(\[]|,', text):
        return (f'--{name}={text!r} is not a tuple literal ml_collections can read; write it as '
                f"--{name}='(1.0, 2.0)' (numbers, nan or inf) or --{name}='(\"a\", \"b\")' (strings)")
    node, (*parents, leaf) = config, name.split('.')[1:]
    for part in parents:
      node = node[part]
    node[leaf] = tuple(value)
  return None


def _last_config_only(argv):
  """argv with only the last --config=FILE (or --config FILE) kept: a field given twice takes its last
  value, and so does --config itself (parsing two config files would define every override flag twice)."""
  at = []
  for i, tok in enumerate(argv[1:], 1):
    if tok == '--':
      break
    if tok.lstrip('-').partition('=')[0] == 'config' and tok.startswith('-'):
      at.append(i)
  drop = set()
  for i in at[:-1]:
    drop.add(i)
    if '=' not in argv[i]:
      drop.add(i + 1)
  return [a for i, a in enumerate(argv) if i not in drop]


def parse_flags(argv):
  """absl parsing, but a bad flag or config override is one `error:` line (no traceback).

  An override naming no field of the config is found by looking it up in the config itself. A field given
  more than once takes its last value, tuples too (and --config); a tuple override with nan or inf
  reads them as floats."""
  argv = _last_config_only(argv)
  sys.argv = list(argv)  # config_flags reads the override names from sys.argv itself
  msg = _precheck_overrides(argv)
  if msg:
    fail(msg)
  try:
    try:
      rest = flags.FLAGS(argv)
    except SystemExit:
      if any(a.split('=')[0] in _HELP_FLAGS for a in argv[1:]):
        _print_config_help()
      raise
    try:
      config = _CONFIG.value
    except Exception:  # noqa: BLE001 - a config file that does not load: _load_config reports it
      config = None
    msg = _fix_tuple_overrides(config, argv) if isinstance(config, ml_collections.ConfigDict) else None
    if msg:
      fail(msg)
    return rest
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except Exception as e:  # noqa: BLE001 - a config file's own error surfaces while the flags are parsed
    if '--debug' in argv:
      raise
    first = (str(e).strip().splitlines() or [''])[0]
    fail(f'--config file or --config.FIELD override is invalid ({type(e).__name__}: {first})')


def _print_config_help():
  """After absl's flag help: every config field with its default (the loaded config's, when --config
  is given) and its one-line meaning."""
  from overparam import config_lib  # noqa: PLC0415
  try:
    config = _CONFIG.value
  except Exception:  # noqa: BLE001 - a config file that does not load: list the base fields
    config = None
  if not isinstance(config, ml_collections.ConfigDict):
    config = config_lib.base_config()
  print('\nconfig fields (--config.FIELD=VALUE overrides one; defaults of '
        f'{getattr(flags.FLAGS["config"], "config_filename", "") or "config_lib.base_config()"}):')
  print('\n'.join(config_lib.field_help(config)))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
