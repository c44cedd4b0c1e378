"""The whole job: config -> targets -> programs -> results rows -> summary and figures, in a workdir.

`run(config, workdir)` validates, resumes from whatever the workdir already holds (only missing cells
are computed), runs every program of the plan (overparam/planner.py) on the engine, confirms in
float64 what the in-loop test decided, appends one results row per finished run (overparam/rows.py),
and writes summary.json and the figures. `plot_only(workdir)` redraws the figures of a workdir.
"""

import dataclasses
import os
import subprocess
import time
from typing import Callable, Dict, List, Optional

from absl import logging
import jax
import jaxlib
import ml_collections
import numpy as np

from overparam import (analysis, compile_cache, config_lib, core, distributed, engine, memory, planner, plots,
                       registry, results, rows, targets)

# Rounds of continuing runs that the in-loop test stopped as converged but whose float64 rel_error
# is >= eps, each with a tighter in-loop threshold; a run still unconfirmed is reported 'unconfirmed'.
CONFIRM_ROUNDS = 2


def provenance() -> Dict:
  try:
    rev = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    rev = None
  return {'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'git_revision': rev,
          'devices': jax.device_count(), 'processes': jax.process_count(),
          'platform': jax.devices()[0].platform}


def confirm(prog: planner.Program, alg, data, cells, out: engine.Outcome, seed_targets, scales, run_kwargs):
  """Continues the runs that stopped as converged in the loop while their float64 rel_error is >= eps,
  with a tighter in-loop threshold (their data.stop_eps: no new compilation), up to CONFIRM_ROUNDS
  times; returns the final Outcome and its float64 rel_errors (None when not computed), which
  rows.finalize reuses.

  Not for loss=samples: there the loop stops on the training error, which says nothing about the
  population error; a run that stopped with population error >= eps is reported `unconfirmed`.
  """
  if prog.task.loss == 'samples':
    return out, None
  eps = np.array([prog.configs[v].eps for _, _, v in cells])
  for _ in range(CONFIRM_ROUNDS):
    rels = rows.rel_errors(prog.task.order, cells, prog.bucket, out, seed_targets, scales)
    status = np.asarray(out.state.status)
    redo = [i for i, r in enumerate(rels) if status[i] == core.CONVERGED and r is not None and r >= eps[i]]
    if not redo:
      return out, rels
    inloop = np.asarray(out.state.rel_err, np.float64)
    ratio = min(float(inloop[i]) / rels[i] for i in redo)
    factor = float(np.clip(0.9 * ratio, 1 / 16, 0.9))
    stop = np.asarray(data.stop_eps).copy()
    stop[redo] = stop[redo] * factor
    data = data._replace(stop_eps=stop)
    logging.info('%s: %d runs stopped as converged in the loop but have float64 rel_error >= eps; '
                 'continuing them with their in-loop threshold x %.3g', prog.label, len(redo), factor)
    new_status = status.copy()
    new_status[redo] = core.RUNNING
    more = engine.run_program(alg, prog.task, data, cells, init_state=out.state._replace(status=new_status),
                              label=prog.label, **run_kwargs)
    trace = {k: np.concatenate([out.trace[k], more.trace[k]], axis=1) for k in out.trace}
    out = more._replace(wall_s=out.wall_s + more.wall_s, trace=trace)
  return out, None


def _changed(old, new) -> str:
  """The static fields in which algorithm value `new` differs from `old` (for the log)."""
  diff = [f'{f.name}={getattr(new, f.name)!r}' for f in dataclasses.fields(new)
          if f.metadata.get('static') and getattr(new, f.name) != getattr(old, f.name)]
  return ', '.join(diff) or repr(new)


def plot_only(workdir: str) -> List[str]:
  """Redraws figures/*.png of a workdir from its config.json (eps) and results.jsonl, computing
  nothing; returns the paths written. WorkdirError (an `error:` line naming the file) if the workdir
  has no usable config.json, a line of results.jsonl is not a row, there are no results, or figures/
  is not a folder."""
  wd = results.Workdir(workdir, defaults=config_lib.base_config().to_dict())  # rows checked against config.json
  if not os.path.isdir(workdir):
    raise results.WorkdirError(f'--workdir {workdir!r} is not a folder')
  cfg = wd.read_config()
  if cfg is None:
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.config_path} is missing (not a workdir of a run)')
  eps = cfg.get('eps')
  if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1):
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.config_path} has no valid eps (a number in (0, 1)), '
                               f'got {eps!r}')
  found = wd.load_results()
  if not found:
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.results_path} has no finished runs')
  if os.path.lexists(wd.figures_dir) and not os.path.isdir(wd.figures_dir):
    raise results.WorkdirError(f'--workdir {workdir!r}: {wd.figures_dir} is not a folder; move it away')
  try:
    return plots.draw_all(found, eps, wd.figures_dir, workdir=wd.path)
  except OSError as e:
    raise results.WorkdirError(f'--workdir {workdir!r}: cannot write figures into {wd.figures_dir} '
                               f'({e.strerror or e})') from None


def load_rows(workdir: str) -> List[Dict]:
  """The rows of a workdir (checked against its config.json)."""
  return results.Workdir(workdir, defaults=config_lib.base_config().to_dict()).load_results()


def _phase(verbose: bool, msg: str, *args):
  """Logs the start of a phase when verbose; returns a function logging its end when verbose or when it
  took more than 10 s."""
  t0 = time.time()
  if verbose:
    logging.info(msg + '...', *args)

  def end():
    took = time.time() - t0
    if verbose or took > 10:
      logging.info(msg + ': done in %.1fs', *args, took)
  return end


def run(c: ml_collections.ConfigDict, workdir: str,
        on_chunk: Optional[Callable[[int], None]] = None, figures: bool = True, verbose: bool = False) -> Dict:
  """Runs (or resumes) the experiment described by `c` into `workdir`; returns the summary.

  Everything the user gives (config, target) is checked before anything is written: the fields, the
  memory of every program, the targets. The writer process holds the workdir's lock until it returns
  (results.Workdir.open). figures=False skips figures/. verbose: log every phase and every chunk (by
  default one line per program, and progress every 10 s of a long one).
  """
  config_lib.validate(c)
  programs = planner.plan(c)
  planner.check_memory(c, programs)  # before anything is allocated or written
  seeds = [c.seed + s for s in range(c.num_seeds)]
  scale_free = all(registry.get(a).scale_free for a in c.algorithms)
  file_array, digest = targets.load_file(c)  # read once; its sha256 goes into the fingerprint
  end = _phase(verbose, 'building targets for %d seeds x %d dims', len(seeds), len(c.dims))
  all_targets = targets.build_all(c, seeds, scale_free, file_array)
  end()
  is_writer = jax.process_index() == 0
  wd = results.Workdir(workdir, defaults=config_lib.base_config().to_dict())
  resolved = results.with_inputs(c.to_dict(), {'target.path': digest})  # the content of the input files
  # every process raises the same error when the writer's open (the lock) refuses the run
  fp = distributed.every_process(
      lambda: wd.open({**resolved, 'provenance': provenance()} if is_writer else resolved, is_writer),
      undo=wd.unlock)
  try:
    return _run_programs(c, wd, fp, seeds, programs, all_targets, is_writer, on_chunk, figures, verbose)
  finally:
    wd.unlock()


def _run_programs(c, wd, fp, seeds, programs, all_targets, is_writer, on_chunk, figures=True, verbose=False) -> Dict:
  found = wd.load_results(fp)
  done = {results.cell_id(r) for r in found}
  out_rows = list(found)
  for prog in programs:
    cells = rows.missing_cells(prog, seeds, done)
    if not cells:
      continue
    seed_targets = all_targets[(targets.key_of(prog.common), prog.dim)]
    scales = ({s: targets.target_scale(t, prog.task.order) for s, t in seed_targets.items()}
              if prog.spec.scale_free else {s: 1.0 for s in seed_targets})
    fitted = {s: targets.scaled_target(t, scales[s]) for s, t in seed_targets.items()}
    runs = planner.program_runs(prog, cells)
    alg = planner.run_algorithm(prog, runs)
    ckpt = os.path.join(wd.ckpt_dir, prog.checkpoint_name)
    data = planner.run_data(prog, runs, fitted)
    run_kwargs = dict(chunk_steps=config_lib.chunk_of(c), trace_every=c.trace_every, is_writer=is_writer,
                      on_chunk=on_chunk, verbose=verbose, export_dim=prog.dim if prog.pad_dim else None)
    out = engine.run_program(alg, prog.task, data, runs, checkpoint_path=ckpt, run_fingerprint=fp,
                             checkpoint_every_s=c.checkpoint_every_s, label=prog.label, **run_kwargs)
    again = alg.retry(prog.task, out.state) if prog.one else None
    if again is not None:  # e.g. lazy_exact's QR needed more deflation slots than it had
      logging.info('%s: rerunning with %s', prog.label, _changed(alg, again))
      alg = again
      out = engine.run_program(alg, prog.task, data, runs, checkpoint_path=ckpt, run_fingerprint=fp,
                               checkpoint_every_s=c.checkpoint_every_s, label=prog.label, **run_kwargs)
    rels = None
    if prog.one:  # solved exactly in init: no in-loop stop to confirm
      out = rows.split_widths(out, list(prog.widths), runs, cells)
    else:
      out, rels = confirm(prog, alg, data, cells, out, seed_targets, scales, run_kwargs)
    end = _phase(verbose, '%s: finishing %d runs (rows%s)', prog.label, len(cells), ', params' if c.save_params else '')
    new = rows.finalize(prog, cells, out, seed_targets, wd, is_writer, fingerprint=fp, scales=scales, rels=rels)
    if is_writer:
      wd.append_results(new)
      engine.remove_checkpoint(ckpt)
    end()
    out_rows.extend(new)
    logging.info('%s: %d runs in %.1fs', prog.label, len(cells), out.wall_s)
    del out, data, alg, fitted
    # the next program's peak then starts from the sweep's live set, not from what this one left;
    # compiled programs are dropped only when the persistent cache makes reloading them cheap
    memory.release_free_heap(clear_compiled=compile_cache.is_on())
  summary = analysis.summarize(out_rows, c.eps)
  if is_writer:
    wd.remove_checkpoints([p.checkpoint_name for p in programs])  # every program is finished
    results.write_json_atomic(wd.summary_path, summary)
    if figures:
      end = _phase(verbose, 'drawing figures')
      try:
        plots.draw_all(out_rows, c.eps, wd.figures_dir, workdir=wd.path)
      except OSError as e:  # the rows are safe; only the figures are missing (--plot_only redraws them)
        raise results.WorkdirError(f'--workdir {wd.path!r}: cannot write figures into {wd.figures_dir} '
                                   f'({e.strerror or e}); the results are complete, redraw with --plot_only') from None
      end()
  return summary
