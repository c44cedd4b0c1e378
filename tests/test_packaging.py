"""The package's shape: the import graph of overparam/ (read from the source, function-local imports and
importlib included) has no cycle and runs one way (math below the algorithms below the engine below the
CLI); pyproject.toml agrees with requirements.txt; `pip install .` gives an importable package that
runs from any directory."""

import ast
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, 'overparam')

# Layers, lowest first: a module may import only modules of its own or a lower layer.
LAYERS = [
    {'errors', 'checks', 'input_files', 'tensors', 'symmetric', 'lstsq', 'network', 'objectives', 'metrics', 'optim',
     'memory', 'registry', 'analysis', 'compile_cache', 'reduce'},                   # math, containers, pure helpers
    {'core', 'gradient_descent', 'beyond_lazy_gd', 'linearized', 'linearized_samples', 'algorithms', 'inputs', 'model',
     'fitting', 'decomposition'},                                                     # the library: algorithms and fit
    {'config_lib', 'targets', 'planner', 'results', 'distributed', 'engine', 'rows', 'plots', 'report', 'experiments', 'api'},  # the engine
]
# Modules that must not import the config, the store or the engine (the math and the library).
NO_CONFIG = LAYERS[0] | LAYERS[1]
CONFIG_OR_ENGINE = {'config_lib', 'targets', 'planner', 'results', 'distributed', 'engine', 'rows', 'plots', 'experiments', 'api',
                    'ml_collections'}


def module_imports():
  """{module: set of overparam modules (and ml_collections) it imports}, from the AST of every file,
  counting imports inside functions and importlib.import_module('overparam.x') calls."""
  out = {}
  for f in sorted(os.listdir(PKG)):
    if not f.endswith('.py'):
      continue
    name = f[:-3]
    tree = ast.parse(open(os.path.join(PKG, f)).read())
    deps = set()
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        names = [f'{base}.{a.name}' for a in node.names] + [base]
      elif isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', '')) in (
          'import_module', '__import__') and node.args and isinstance(node.args[0], ast.Constant):
        names = [str(node.args[0].value)]
      for n in names:
        parts = n.split('.')
        if parts[0] == 'overparam' and len(parts) > 1 and os.path.exists(os.path.join(PKG, parts[1] + '.py')):
          deps.add(parts[1])
        elif parts[0] == 'ml_collections':
          deps.add('ml_collections')
    deps.discard(name)
    out[name] = deps
  return out


def find_cycle(graph):
  """A cycle of the graph as a list of modules, or None (depth-first search)."""
  color, stack = {}, []

  def visit(v):
    color[v] = 1
    stack.append(v)
    for w in sorted(graph.get(v, ())):
      if w not in graph:
        continue
      if color.get(w) == 1:
        return stack[stack.index(w):] + [w]
      if color.get(w) is None:
        found = visit(w)
        if found:
          return found
    color[v] = 2
    stack.pop()
    return None

  for v in sorted(graph):
    if color.get(v) is None:
      found = visit(v)
      if found:
        return found
  return None


def test_the_cycle_finder_finds_cycles():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycles():
  graph = module_imports()
  assert 'fitting' in graph and 'core' in graph['fitting']  # the graph is read
  assert find_cycle(graph) is None, find_cycle(graph)


def test_every_module_has_a_layer_and_imports_run_one_way():
  graph = module_imports()
  layer = {m: i for i, ms in enumerate(LAYERS) for m in ms}
  missing = sorted(set(graph) - set(layer) - {'__init__'})
  assert not missing, f'modules without a layer in this test: {missing}'
  for m, deps in graph.items():
    if m == '__init__':
      continue
    up = [d for d in deps if d in layer and layer[d] > layer[m]]
    assert not up, f'{m} (layer {layer[m]}) imports {up} from a higher layer'


def test_the_library_imports_no_config_store_or_engine():
  graph = module_imports()
  for m in NO_CONFIG:
    assert not graph[m] & CONFIG_OR_ENGINE, (m, graph[m] & CONFIG_OR_ENGINE)


def test_the_registry_imports_nothing_that_registers_into_it():
  graph = module_imports()
  assert graph['registry'] <= {'errors'}, graph['registry']


def _pins():
  out = {}
  for line in open(os.path.join(ROOT, 'requirements.txt')):
    line = line.split('#')[0].strip()
    if line:
      r = Requirement(line)
      out[r.name.lower()] = next(iter(r.specifier)).version
  return out


def test_pyproject_dependencies_contain_the_pins():
  text = open(os.path.join(ROOT, 'pyproject.toml')).read()
  deps = re.search(r'dependencies = \[(.*?)\]', text, re.S).group(1)
  reqs = [Requirement(x) for x in re.findall(r'"([^"]+)"', deps)]
  pins = _pins()
  for r in reqs:
    assert r.name.lower() in pins, f'{r.name} is not pinned in requirements.txt'
    assert r.specifier.contains(pins[r.name.lower()]), (r, pins[r.name.lower()])
  runtime = {'jax', 'jaxlib', 'optax', 'chex', 'absl-py', 'ml-collections', 'numpy', 'matplotlib'}
  assert {r.name.lower() for r in reqs} == runtime


@pytest.mark.slow
def test_pip_install_gives_a_package_that_runs_from_any_directory(tmp_path):
  target = tmp_path / 'site'
  proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q',
                         '--target', str(target), ROOT], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (target / 'overparam' / 'fitting.py').exists() and not (target / 'tests').exists()
  code = ('import overparam, numpy as np, jax; a = np.eye(2, 3); t = np.einsum("ri,rj,rk->ijk", a, a, a); '
          'r = overparam.fit(overparam.beyond_lazy(), jax.random.PRNGKey(0), t, width=2); '
          'assert overparam.__file__.startswith(%r), overparam.__file__; print(r.status_name)' % str(target))
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS='cpu')
  run = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0 and run.stdout.strip() == 'converged', run.stderr[-3000:]
  launch = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), '--helpshort'], cwd=str(tmp_path),
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True, timeout=300)
  assert '--workdir' in launch.stdout and 'Traceback' not in launch.stderr, launch.stderr[-2000:]  # absl's help exits 1
