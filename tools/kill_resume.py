r"""Kill-and-resume trials: SIGKILL the launcher at random moments, re-run, compare with an unbroken run.

  python -m tools.kill_resume --trials=10 --kills=3 --finish_trials=5 --concurrent_trials=3 --plot_trials=3

Each trial starts the same command into a fresh workdir and then lets it finish:
- random kills: SIGKILL after a random delay (up to `kills` times, each time re-running the command);
- finishing kills: SIGKILL while a program is being finished (0-50 ms after its `finishing` log line,
  when rows and params are being written), `kills` times;
- concurrent launches: two launches of the same command into one workdir at once (one must be refused
  with `error: ... in use by another launch`, or find nothing left to do), then a SIGKILL of the
  survivor and a third launch while a fourth tries to join;
- plot kills: SIGKILL `--plot_only` into a copy of the finished reference workdir at random moments,
  `kills` times; after each kill every figure must still be a complete PNG (the one drawn before, or
  the new one: figures are rendered to memory and renamed into place), then the command resumes.
A trial passes when results.jsonl holds exactly one line per cell (0 lost, 0 duplicated), every line
parses, every number equals the unbroken run's, and no temporary file is left in the workdir. Prints
one line per trial and a total.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The trials' own config (written next to the workdirs), so that they do not depend on configs/*.py.
CONFIG = """
from overparam import config_lib


def get_config():
  c = config_lib.base_config()
  c.algorithms = ('gd',)
  c.order, c.dims, c.rank, c.widths, c.num_seeds = 3, (6, 8), 2, (2, 5, 11), 3
  c.steps, c.chunk_steps, c.eps, c.lr, c.init_scale = 600, 50, 1e-9, 0.05, 0.3
  c.checkpoint_every_s, c.trace_every = 0.0, 25
  return c
"""
COMPARED = ('rel_error', 'status', 'steps', 'movement', 'max_cos', 'recovered_fraction', 'params_file')


def _start(workdir, plot_only=False):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  config = os.path.join(os.path.dirname(workdir), 'kill_resume_config.py')
  args = ['--plot_only'] if plot_only else [f'--config={config}']
  return subprocess.Popen([sys.executable, 'launch.py', *args, f'--workdir={workdir}'], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_to_end(workdir, timeout=600):
  p = _start(workdir)
  _, err = p.communicate(timeout=timeout)
  if p.returncode != 0:
    raise RuntimeError(f'launch failed ({p.returncode}): {err[-1500:]}')


def read_lines(workdir):
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    return f.read().split('\n')


def check(workdir, reference):
  """Returns a list of problems (empty: the trial passed)."""
  problems = []
  lines = [x for x in read_lines(workdir) if x.strip()]
  rows = []
  for x in lines:
    try:
      rows.append(json.loads(x))
    except ValueError:
      problems.append(f'unparsable line {x[:40]!r}')
  cells = [(r['algorithm'], r['dim'], r['width'], r['seed']) for r in rows]
  if len(cells) != len(set(cells)):
    problems.append(f'{len(cells) - len(set(cells))} duplicated cells')
  ref = {(r['algorithm'], r['dim'], r['width'], r['seed']): r for r in reference}
  missing = set(ref) - set(cells)
  if missing:
    problems.append(f'{len(missing)} cells lost')
  for r in rows:
    k = (r['algorithm'], r['dim'], r['width'], r['seed'])
    for f in COMPARED:
      if k in ref and r.get(f) != ref[k].get(f):
        problems.append(f'{k} {f}: {r.get(f)} != {ref[k].get(f)}')
  for dirpath, _, files in os.walk(workdir):
    problems += [f'temporary file {f}' for f in files if '.overparam-tmp.' in f or '.tmp.' in f]
  return problems


def trial(workdir, reference, kills, max_delay, rng):
  killed_at = []
  for _ in range(kills):
    p = _start(workdir)
    delay = rng.uniform(0.3, max_delay)
    try:
      p.wait(timeout=delay)
      break  # finished before the kill
    except subprocess.TimeoutExpired:
      p.send_signal(signal.SIGKILL)
      p.wait()
      killed_at.append(round(delay, 2))
  run_to_end(workdir)
  return killed_at, check(workdir, reference)


def kill_while_finishing(workdir, rng):
  """Starts the command and SIGKILLs it 0-50 ms after its first `finishing` log line; returns the
  delay, or None if it finished without one (nothing left to finish)."""
  p = _start(workdir)
  for line in p.stderr:
    if ': finishing ' in line:
      delay = rng.uniform(0.0, 0.05)
      time.sleep(delay)
      p.send_signal(signal.SIGKILL)
      p.wait()
      return round(delay, 3)
  p.wait()
  return None


def finish_trial(workdir, reference, kills, rng):
  killed_at = []
  for _ in range(kills):
    d = kill_while_finishing(workdir, rng)
    if d is None:
      break
    killed_at.append(d)
  run_to_end(workdir)
  return killed_at, check(workdir, reference)


def concurrent_trial(workdir, reference, rng):
  """Two launches at once; then a kill of the one running while another tries to join; then the end."""
  events = []
  a, b = _start(workdir), _start(workdir)
  for p in (a, b):
    _, err = p.communicate(timeout=600)
    events.append(p.returncode)
    if p.returncode not in (0, 2) or (p.returncode == 2 and 'in use by another launch' not in err):
      return events, [f'unexpected exit {p.returncode}: {err.strip().splitlines()[-1:]}']
  if events.count(0) < 1:
    return events, ['neither concurrent launch ran']
  # a fresh workdir: a running launch (pid holding the lock), a second one refused, the first killed
  fresh = workdir + '_b'
  p = _start(fresh)
  time.sleep(rng.uniform(0.3, 2.0))
  q = _start(fresh)
  _, err = q.communicate(timeout=600)
  events.append(q.returncode)
  if q.returncode == 2 and 'in use by another launch' not in err:
    return events, [f'second launch: {err.strip().splitlines()[-1:]}']
  p.send_signal(signal.SIGKILL)
  p.wait()
  run_to_end(fresh)  # the killed holder's lock is gone at once
  return events, check(workdir, reference) + check(fresh, reference)


def complete_png(path) -> bool:
  """A whole PNG file: the signature, and the IEND chunk at the very end."""
  with open(path, 'rb') as f:
    data = f.read()
  return data.startswith(b'\x89PNG\r\n\x1a\n') and data[-12:-4] == b'\x00\x00\x00\x00IEND'


def plot_trial(workdir, finished, reference, kills, rng):
  """--plot_only into a copy of a finished workdir, SIGKILLed at random moments: after each kill every
  figure is a complete PNG; then the command resumes (nothing to compute) and the workdir is checked."""
  shutil.copytree(finished, workdir)
  figures = os.path.join(workdir, 'figures')
  drawn = sorted(os.listdir(figures))
  problems, killed_at = [] if drawn else ['the reference run drew no figure'], []
  for _ in range(kills):
    p = _start(workdir, plot_only=True)
    delay = rng.uniform(0.5, 5.0)
    try:
      p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      p.send_signal(signal.SIGKILL)
      p.wait()
      killed_at.append(round(delay, 2))
    for f in drawn:
      if not complete_png(os.path.join(figures, f)):
        problems.append(f'{f} is not a complete PNG after a kill at {delay:.2f} s')
  run_to_end(workdir)  # a real run (nothing left to compute) removes the killed one's temporaries
  return killed_at, problems + check(workdir, reference)


def main(trials=10, kills=3, max_delay=None, seed=0, finish_trials=0, concurrent_trials=0, plot_trials=0):
  rng = random.Random(seed)
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, 'kill_resume_config.py'), 'w') as f:
      f.write(CONFIG)
    t0 = time.time()
    run_to_end(os.path.join(tmp, 'ref'))
    unbroken_s = time.time() - t0
    reference = [json.loads(x) for x in read_lines(os.path.join(tmp, 'ref')) if x.strip()]
    max_delay = max_delay or 0.7 * unbroken_s  # most starts are killed; some run to the end
    failures = total_kills = 0
    for i in range(trials):
      killed_at, problems = trial(os.path.join(tmp, f't{i}'), reference, kills, max_delay, rng)
      failures += bool(problems)
      total_kills += len(killed_at)
      print(f'trial {i}: killed at {killed_at} s, cells {len(reference)}, '
            f'{"ok" if not problems else "FAILED: " + "; ".join(problems[:5])}', flush=True)
    for i in range(finish_trials):
      killed_at, problems = finish_trial(os.path.join(tmp, f'f{i}'), reference, kills, rng)
      failures += bool(problems)
      total_kills += len(killed_at)
      print(f'finishing trial {i}: killed {len(killed_at)}x while finishing (ms after the log line: '
            f'{[round(1000 * d) for d in killed_at]}), cells {len(reference)}, '
            f'{"ok" if not problems else "FAILED: " + "; ".join(problems[:5])}', flush=True)
    for i in range(concurrent_trials):
      codes, problems = concurrent_trial(os.path.join(tmp, f'c{i}'), reference, rng)
      failures += bool(problems)
      print(f'concurrent trial {i}: exit codes {codes}, cells {len(reference)}, '
            f'{"ok" if not problems else "FAILED: " + "; ".join(problems[:5])}', flush=True)
    for i in range(plot_trials):
      killed_at, problems = plot_trial(os.path.join(tmp, f'p{i}'), os.path.join(tmp, 'ref'), reference, kills, rng)
      failures += bool(problems)
      total_kills += len(killed_at)
      print(f'plot trial {i}: --plot_only killed at {killed_at} s, '
            f'{"ok" if not problems else "FAILED: " + "; ".join(problems[:5])}', flush=True)
    n = trials + finish_trials + concurrent_trials + plot_trials
    print(f'{n - failures} passed, {failures} failed ({total_kills} kills in all)')
  return failures


if __name__ == '__main__':
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--trials', type=int, default=10)
  ap.add_argument('--kills', type=int, default=3)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--finish_trials', type=int, default=3)
  ap.add_argument('--concurrent_trials', type=int, default=2)
  ap.add_argument('--plot_trials', type=int, default=2)
  a = ap.parse_args()
  sys.exit(1 if main(a.trials, a.kills, seed=a.seed, finish_trials=a.finish_trials,
                     concurrent_trials=a.concurrent_trials, plot_trials=a.plot_trials) else 0)
