"""Test-session setup: XLA's CPU backend at optimization level 0 (below), float64 available
everywhere (the library passes dtypes explicitly), and the `slow` marker: the README's command with
`-m "not slow"` is the quick loop (the math and store tests); without it, everything."""

import os

# Before jax starts its backend, and inherited by every launch a test starts: XLA's CPU backend
# (LLVM) at optimization level 0. The tests' programs are small, so compiling them is most of the
# suite's time; the HLO, and so the math and its run-to-run determinism, is the same at any level.
# Measured from an empty compilation cache on 2 cores (benchmarks/test_loop.py, RESULTS section
# 12). An optimization level already in XLA_FLAGS is kept: XLA_FLAGS=--xla_backend_optimization_level=3
# (XLA's default) tests the machine code users run.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402 - after XLA_FLAGS

jax.config.update('jax_enable_x64', True)


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: compiles or launches whole sweeps (seconds each); '
                          'deselect with -m "not slow"')

