"""overparam: lazy versus beyond-lazy training of over-parameterized tensor decomposition."""

import os

# XLA's CPU LAPACK kernels (lazy_exact's QR, SVD, Cholesky, eigh) call the OpenBLAS that numpy and
# scipy load. With its default thread pool spinning against XLA's own threads on shared cores,
# lazy_exact's many small LAPACK calls ran 3x slower (configs/default.py at d = 16, 2 cores, load
# ~3.5: 24.8 s against 7.6 s). One thread unless the user chose otherwise; it must be set before
# numpy loads, which importing this package does first (launch.py imports nothing else before it).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
