"""Test-session setup: float64 available everywhere (the library passes dtypes explicitly)."""

import jax

jax.config.update('jax_enable_x64', True)
