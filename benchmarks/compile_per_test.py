r"""A pytest plugin: XLA compile seconds and compiled programs per test, summed over the session.

  python -m pytest -q -n auto --maxprocesses=4 -m "not slow" -p benchmarks.compile_per_test tests

At the end it prints the total backend (XLA) compile seconds, the number of programs compiled, the
seconds spent tracing to jaxprs and lowering to MLIR, and the 25 tests that compiled the longest
(compile seconds, programs, trace and lowering seconds, test). Under pytest-xdist every worker
writes its counts to a temporary folder and the controller adds them up. Only compiles made in the
test processes count (a test's launches are other processes). Used for benchmarks/RESULTS.md
section 12: where the quick loop's time goes.
"""

import collections
import json
import os
import tempfile

import jax
import pytest

EVENT = '/jax/core/compile/backend_compile_duration'
TRACE = '/jax/core/compile/jaxpr_trace_duration'
LOWER = '/jax/core/compile/jaxpr_to_mlir_module_duration'
TOP = 25
_current = {'test': None}
_totals = collections.defaultdict(lambda: [0.0, 0, 0.0, 0.0])  # test -> [compile s, programs, trace s, lower s]


def _on_duration(event, duration, **_):
  if not _current['test']:
    return
  t = _totals[_current['test']]
  if event == EVENT:
    t[0] += duration
    t[1] += 1
  elif event == TRACE:
    t[2] += duration
  elif event == LOWER:
    t[3] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _folder(config) -> str:
  return os.path.join(tempfile.gettempdir(), f'compile_per_test.{config.option.compile_per_test_run}')


def pytest_addoption(parser):
  parser.addoption('--compile-per-test-run', dest='compile_per_test_run', default=str(os.getpid()),
                   help='internal: the folder tag the controller gives its workers')


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):  # xdist controller: one folder for every worker of this session
  node.workerinput['compile_per_test_run'] = node.config.option.compile_per_test_run


def pytest_configure(config):
  if hasattr(config, 'workerinput'):
    config.option.compile_per_test_run = config.workerinput['compile_per_test_run']
  os.makedirs(_folder(config), exist_ok=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  _current['test'] = item.nodeid
  yield
  _current['test'] = None


def pytest_sessionfinish(session):
  folder = _folder(session.config)
  with open(os.path.join(folder, f'{os.getpid()}.json'), 'w') as f:
    json.dump(dict(_totals), f)
  if hasattr(session.config, 'workerinput'):
    return  # a worker: the controller reports
  merged = {}
  for name in os.listdir(folder):
    with open(os.path.join(folder, name)) as f:
      merged.update(json.load(f))
    os.remove(os.path.join(folder, name))
  os.rmdir(folder)
  total = sum(v[0] for v in merged.values())
  programs = sum(v[1] for v in merged.values())
  trace = sum(v[2] for v in merged.values())
  lower = sum(v[3] for v in merged.values())
  lines = [f'\ncompile_per_test: XLA backend compile {total:.1f}s, {programs} programs, '
           f'in {len(merged)} tests that compiled; tracing {trace:.1f}s, lowering to MLIR {lower:.1f}s',
           '  compile programs  trace  lower  test']
  for test, (sec, n, tr, lo) in sorted(merged.items(), key=lambda kv: -kv[1][0])[:TOP]:
    lines.append(f'  {sec:6.2f}s {n:5d}  {tr:5.2f}s {lo:5.2f}s  {test}')
  print('\n'.join(lines), flush=True)
