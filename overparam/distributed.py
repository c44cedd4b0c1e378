"""Multi-process jobs: joining the job with a timeout, and agreeing on a refusal.

initialize() is jax.distributed.initialize bounded by a timeout (a coordinator that never answers is one
`error:` line after timeout_s and exit status 2, not a silent hang). every_process(fn) runs a step
that may refuse the run (the workdir lock: only process 0 takes it) on every process and makes all of
them raise the same error when any of them does (results.on_every_process), so that no process waits
in a later collective for one that has already stopped.
"""

import os
import sys
import threading
from typing import Callable, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from overparam import results
from overparam.errors import UserError

# jax.distributed.initialize's default initialization timeout (jax 0.10.2: initialization_timeout=300).
DEFAULT_TIMEOUT_S = 300


class DistributedError(UserError):
  """A multi-process job that cannot start (coordinator unreachable); the message names the flags."""


def _exit_with_error(msg: str):
  print(f'error: {msg}', file=sys.stderr, flush=True)
  os._exit(2)  # noqa: SLF001 - from the watchdog thread: jax's connect cannot be interrupted


def initialize(coordinator_address: Optional[str], num_processes: Optional[int], process_id: Optional[int],
               timeout_s: int = DEFAULT_TIMEOUT_S, on_timeout: Callable[[str], None] = _exit_with_error):
  """jax.distributed.initialize, bounded by timeout_s seconds.

  jax 0.10.2's own bound (initialization_timeout) ends the process with a C++ abort and a stack
  trace, so a watchdog thread (jax releases the GIL while it connects) calls on_timeout(message) first:
  by default an `error: ...` line naming the coordinator and the flags, and exit status 2. jax's own
  timeout is set 60 s later, as a backstop. Any error jax raises is a DistributedError."""
  who = (f'process {process_id} of {num_processes}' if process_id is not None else 'this process')
  where = coordinator_address or '(detected from the cluster environment)'
  if process_id == 0:
    waiting = f'the other {num_processes - 1} processes did not connect to {where}'
  else:
    waiting = f'the coordinator (process 0) at {where} did not answer'
  msg = (f'--coordinator_address {where}: {who} could not join the job within --coordinator_timeout_s={timeout_s} '
         f's ({waiting}); start every process with the same --coordinator_address and --num_processes, check that '
         'the address is reachable, or raise --coordinator_timeout_s')
  logging.info('joining the job: %s, coordinator %s (waiting up to %d s)', who, where, timeout_s)
  watchdog = threading.Timer(timeout_s, on_timeout, args=(msg,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=int(timeout_s) + 60)
  except Exception as e:  # noqa: BLE001 - jax raises XlaRuntimeError / RuntimeError / ValueError here
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise DistributedError(f'--coordinator_address {where}: {who} could not join the job ({first})') from None
  finally:
    watchdog.cancel()


def _allgather(x: np.ndarray) -> np.ndarray:
  return np.asarray(multihost_utils.process_allgather(x))


def every_process(fn: Callable, undo: Optional[Callable] = None):
  """fn() on this process; in a multi-process job, every process raises the same UserError if fn raised
  one on any process (results.on_every_process; undo() first where fn succeeded)."""
  return results.on_every_process(fn, jax.process_count(), _allgather, undo=undo)
