"""Test-session setup: float64 available everywhere (the library passes dtypes explicitly), and the
`slow` marker: `python -m pytest -q -m "not slow" tests` is the quick loop (the math and store tests);
the README's command runs everything."""

import jax

jax.config.update('jax_enable_x64', True)


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: compiles or launches whole sweeps (seconds each); '
                          'deselect with -m "not slow"')

