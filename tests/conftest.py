"""Test-session setup: XLA's CPU backend tuned to compile fast (below), float64 available
everywhere (the library passes dtypes explicitly), and the `slow` marker: the README's command with
`-m "not slow"` is the quick loop (the math and store tests); without it, everything."""

import os

# Before jax starts its backend, and inherited by every launch a test starts: XLA's CPU backend
# compiles at LLVM optimization level 0 and with its classic (LLVM IR) fusion emitters instead of
# the newer MLIR ones. The tests' programs are small, so compiling them is most of the suite's time
# (each flag roughly halves it); the HLO, and so the math and its run-to-run determinism, is the
# same either way. Measured from an empty compilation cache on 2 cores (benchmarks/test_loop.py,
# RESULTS section 12). A flag already in XLA_FLAGS is kept: XLA_FLAGS="--xla_backend_optimization_level=3
# --xla_cpu_use_fusion_emitters=true" (XLA's defaults) tests the machine code users run.
TEST_XLA_FLAGS = {'--xla_backend_optimization_level': '0', '--xla_cpu_use_fusion_emitters': 'false'}
for _flag, _value in TEST_XLA_FLAGS.items():
  if _flag not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip()

import jax  # noqa: E402 - after XLA_FLAGS

jax.config.update('jax_enable_x64', True)


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: compiles or launches whole sweeps (seconds each); '
                          'deselect with -m "not slow"')

