r"""Loss-and-gradient kernels: implicit versus dense, and the dense path against the machine's GEMM.

  python -m benchmarks.loss_bench [--quick]

implicit_vs_dense   one value-and-gradient of the loss, l=4, d=48, m=128, r=5 (cp parametrization):
                    dense builds the (d,)*4 tensor (5.3M entries), implicit never does.
                    ratio = dense time / implicit time.
dense_flops         the dense loss value-and-gradient at l=3, d=64, m=1024: achieved FLOP/s, counting
                    the contractions it performs (forward GEMM 2 m d^l, backward GEMM 2 m d^l; the
                    O(m d^{l-1}) Khatri-Rao work is not counted), as a fraction of the FLOP/s of a
                    square f32 matmul of similar work measured in the same script.
                    ratio = achieved / matmul.
Times are medians over repeated calls after a warm-up call (compilation excluded). The full run also
prints the share of the two GEMMs in the dense loss+grad time and the GEMMs in alternative layouts.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import median_seconds
from overparam import objectives, tensors


def loss_and_grad(order, dim, width, rank, loss, key):
  params = objectives.init_params(jax.random.fold_in(key, 0), 'cp', width, dim, 0.3)
  target = tensors.make_target(jax.random.fold_in(key, 1), 'random_unit', order, dim, rank)
  if loss == 'dense':
    target = target._replace(dense=tensors.dense_cp(target.coeffs, target.factors, order))
  ones = jnp.ones(width)
  # The library's objective as gd evaluates it (cp parametrization, no padding, reg = 0).
  fn = jax.jit(jax.value_and_grad(lambda p, t: objectives.objective(p, ones, ones, t, order, 'cp', loss, 0.0)[0]))
  return fn, params, target


def implicit_vs_dense(repeats):
  key = jax.random.PRNGKey(0)
  out = {}
  for loss in ('implicit', 'dense'):
    fn, p, t = loss_and_grad(4, 48, 128, 5, loss, key)
    out[loss] = median_seconds(fn, p, t, repeats=repeats)
  ratio = out['dense'] / out['implicit']
  print(f'implicit_vs_dense l=4 d=48 m=128 r=5 implicit={out["implicit"] * 1e3:.3f}ms '
        f'dense={out["dense"] * 1e3:.2f}ms ratio={ratio:.1f}')
  return ratio


def dense_flops(repeats):
  order, dim, width = 3, 64, 1024
  fn, p, t = loss_and_grad(order, dim, width, 5, 'dense', jax.random.PRNGKey(0))
  secs = median_seconds(fn, p, t, repeats=repeats)
  achieved = 4 * width * dim ** order / secs
  n = 2048
  x = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm_secs = median_seconds(jax.jit(jnp.matmul), x, x, repeats=repeats)
  peak = 2 * n ** 3 / mm_secs
  ratio = achieved / peak
  # Profile: the two GEMMs of the loss alone, at its shapes (forward (d, m) x (m, d^{l-1}) and backward
  # (m, d^{l-1}) x (d^{l-1}, d)); the rest of the loss+grad time is the O(m d^{l-1} + d^l) memory-bound
  # work (Khatri-Rao power, residual, reductions).
  kr = jax.random.normal(jax.random.PRNGKey(2), (width, dim ** (order - 1)), jnp.float32)
  cv = jax.random.normal(jax.random.PRNGKey(3), (dim, width), jnp.float32)
  res = jax.random.normal(jax.random.PRNGKey(4), (dim, dim ** (order - 1)), jnp.float32)
  fwd = median_seconds(jax.jit(jnp.matmul), cv, kr, repeats=repeats)
  bwd = median_seconds(jax.jit(lambda a, b: a @ b.T), kr, res, repeats=repeats)
  gemm = 2 * width * dim ** order
  print(f'  profile: forward GEMM {fwd * 1e3:.2f}ms ({gemm / fwd / 1e9:.0f} GFLOP/s), backward GEMM '
        f'{bwd * 1e3:.2f}ms ({gemm / bwd / 1e9:.0f} GFLOP/s), GEMMs {100 * (fwd + bwd) / secs:.0f}% of the '
        f'loss+grad time; the rest is Khatri-Rao, residual and reductions (memory-bound)')
  print(f'dense_flops l=3 d=64 m=1024 loss+grad={secs * 1e3:.2f}ms achieved={achieved / 1e9:.1f}GFLOP/s '
        f'matmul{n}={peak / 1e9:.1f}GFLOP/s ratio={ratio:.2f}')
  return ratio


def layouts(repeats):
  """The dense loss's two GEMMs in the shipped layout against the alternative layouts."""
  m, d, big = 1024, 64, 64 * 64
  kr = jax.random.normal(jax.random.PRNGKey(2), (m, big), jnp.float32)
  cv = jax.random.normal(jax.random.PRNGKey(3), (m, d), jnp.float32)
  r = jax.random.normal(jax.random.PRNGKey(4), (d, big), jnp.float32)
  rt = jnp.asarray(np.asarray(r).T)
  gemm = 2 * m * d * big
  print('  GEMM layouts at the dense_flops shapes (m=1024, d=64, D=d^2):')
  for name, fn, args in (
      ('forward (c V)^T @ KR -> (d, D)  [shipped]', lambda a, b: a.T @ b, (cv, kr)),
      ('forward KR^T @ (c V) -> (D, d)', lambda a, b: b.T @ a, (cv, kr)),
      ('backward KR @ R^T, R (d, D)     [shipped]', lambda a, b: a @ b.T, (kr, r)),
      ('backward KR @ R, R stored (D, d)', lambda a, b: a @ b, (kr, rt))):
    t = median_seconds(jax.jit(fn), *args, repeats=repeats)
    print(f'    {name:<44}{t * 1e3:>7.2f}ms {gemm / t / 1e9:>6.0f} GFLOP/s')


def main(quick: bool = False):
  repeats = 5 if quick else 20
  out = {'implicit_vs_dense': implicit_vs_dense(repeats), 'dense_flops': dense_flops(repeats)}
  if not quick:
    layouts(repeats)
  return out


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true')
  main(p.parse_args().quick)
