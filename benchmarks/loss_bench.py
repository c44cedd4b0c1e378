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
Times are medians over repeated calls after a warm-up call (compilation excluded).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from overparam import objectives, tensors


def median_seconds(fn, *args, repeats=20):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def loss_and_grad(order, dim, width, rank, loss, key):
  params = objectives.init_params(jax.random.fold_in(key, 0), 'cp', width, dim, 0.3)
  target = tensors.make_target(jax.random.fold_in(key, 1), 'random_unit', order, dim, rank)
  if loss == 'dense':
    target = target._replace(dense=tensors.dense_cp(target.coeffs, target.factors, order))
  spec = objectives.Spec(order, 'cp', loss)
  ones = jnp.ones(width)
  fn = jax.jit(jax.value_and_grad(lambda p, t: objectives.objective(p, ones, ones, t, spec)[0]))
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
  print(f'dense_flops l=3 d=64 m=1024 loss+grad={secs * 1e3:.2f}ms achieved={achieved / 1e9:.1f}GFLOP/s '
        f'matmul{n}={peak / 1e9:.1f}GFLOP/s ratio={ratio:.2f}')
  return ratio


def main(quick: bool = False):
  repeats = 5 if quick else 20
  return {'implicit_vs_dense': implicit_vs_dense(repeats), 'dense_flops': dense_flops(repeats)}


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true')
  main(p.parse_args().quick)
