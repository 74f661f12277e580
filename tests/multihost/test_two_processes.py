"""Two CPU processes on localhost (2 devices each, gloo collectives) train stage 1 and
stage 2 to the params of one process with 4 devices and of one unsharded device
(<= 1e-6, float32); the two-process stage 1 has one process killed mid-run and both
relaunched, and resumes from the last checkpoint.

The two-process runs are `launch.main` with --coordinator_address / --num_processes /
--process_id; the one-process references run `train_worker.py` (the same library
calls, stage 1 then stage 2 in one process). XLA's device count is fixed per process,
so every run is a subprocess.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import movielens_userllm
from configs import testing as test_configs
from user_llm import checkpointing
from user_llm import testing

HERE = pathlib.Path(__file__).resolve().parent
STEPS = 20  # Per stage; stage 1 is killed after its first checkpoint (step 5).
MESH1 = (('data', 2), ('fsdp', 2), ('tensor', 1))  # Stage 1 over the 4 devices.
MESH2 = (('data', 1), ('fsdp', 2), ('tensor', 2))  # Stage 2: fsdp x tensor across hosts.
STAGE2_ARG = 'runlocal,strategy=full'  # Every param trains (and is sharded).


def _overrides(data: pathlib.Path, sharded: bool) -> dict:
  """Config overrides of both stages (dotted keys) that every layout shares."""
  common = {'data.path': str(data), 'train.num_steps': STEPS, 'train.ckpt_every': 5,
            'train.log_every': 5, 'train.eval_every': -1}  # Train only: params compared.
  # Multi-process runs never trim batches (per-process shapes would differ): nor here.
  stage2 = dict(common, **{'data.trim_multiple': 0, 'train.batch_size': 4})
  if sharded:
    return {'stage1': dict(common, mesh=MESH1), 'stage2': dict(stage2, mesh=MESH2)}
  return {'stage1': common, 'stage2': stage2}


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
  return out


def _tiny_stage2_flags() -> list[str]:
  """configs/testing.py's tiny stage 2 as --config flags over movielens_userllm.py."""
  base = _flat(movielens_userllm.get_config(STAGE2_ARG).to_dict())
  tiny = _flat(test_configs.tiny_userllm_config('strategy=full').to_dict())
  return [f'--config.{k}={v}' for k, v in tiny.items() if base.get(k) != v]


def _port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(args: list[str], devices: int) -> subprocess.Popen:
  return subprocess.Popen(
      args, cwd=testing.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=testing.launcher_env(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}'))


def _finish(procs: list[subprocess.Popen], timeout: float = 900) -> None:
  for p in procs:
    out, err = p.communicate(timeout=timeout)
    fatal = [l for l in err.splitlines() if l.startswith(('F', 'E')) or 'Error' in l]
    assert p.returncode == 0, '\n'.join([out[-2000:], *fatal[-20:], err[-3000:]])


def _two_processes(config: str, workdir: pathlib.Path, flags: list[str]) -> list[subprocess.Popen]:
  port = _port()
  return [_start([sys.executable, '-m', 'launch.main', f'--config={config}',
                  f'--workdir={workdir}', *flags,
                  f'--config.data.cache_dir={workdir}_cache_p{i}',  # One per host.
                  f'--coordinator_address=localhost:{port}', '--num_processes=2',
                  f'--process_id={i}'], 2) for i in range(2)]


def _kill_after_first_checkpoint(procs: list[subprocess.Popen], workdir: pathlib.Path) -> int:
  """SIGKILLs process 1 once a checkpoint exists, then process 0; returns the last step saved."""
  ckpts = workdir / 'checkpoints'
  deadline = time.time() + 600
  while not (ckpts.is_dir() and any(d.isdigit() for d in os.listdir(ckpts))):
    assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-5000:]
    assert time.time() < deadline
    time.sleep(0.02)
  os.kill(procs[1].pid, signal.SIGKILL)
  assert procs[1].wait() == -signal.SIGKILL
  try:  # Process 0 fails on its next collective, or waits on it: kill it too.
    procs[0].wait(timeout=10)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    procs[0].wait()
  saved = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert saved and saved[-1] < STEPS, saved
  return saved[-1]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Workdirs of both stages in three layouts: two processes (stage 1 killed once and
  relaunched), one process with 4 devices, one device."""
  root = tmp_path_factory.mktemp('multihost')
  data = testing.write_movielens(root / 'ml')
  worker = [sys.executable, str(HERE / 'train_worker.py')]
  _finish([_start(worker + [str(root / 'four'), json.dumps(_overrides(data, True))], 4),
           _start(worker + [str(root / 'one'), json.dumps(_overrides(data, False))], 1)])
  two = root / 'two'
  sharded = _overrides(data, True)
  flags1 = [f'--config.{k}={v}' for k, v in sharded['stage1'].items()]
  stage1 = ('configs/movielens_pretrain.py:runlocal', two / 'stage1', flags1)
  killed_at = _kill_after_first_checkpoint(_two_processes(*stage1), two / 'stage1')
  _finish(_two_processes(*stage1))
  flags2 = _tiny_stage2_flags() + [f'--config.{k}={v}' for k, v in sharded['stage2'].items()]
  _finish(_two_processes(f'configs/movielens_userllm.py:{STAGE2_ARG}', two / 'stage2',
                         flags2 + [f'--config.userllm.encoder_workdir={two / "stage1"}']))
  return {'two': two, 'four': root / 'four', 'one': root / 'one', 'killed_at': killed_at}


def _max_diff(a, b) -> float:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('stage', ['stage1', 'stage2'])
def test_two_processes_match_one_process_and_one_device(runs, stage):
  with open(runs['two'] / stage / 'results.json') as f:
    results = json.load(f)
  assert results['step'] == STEPS
  if stage == 'stage1':  # Relaunched after the kill: resumed from the last checkpoint.
    assert results['resumed'] == f'resumed@{runs["killed_at"]}', (results, runs['killed_at'])
  two = checkpointing.load_params(str(runs['two'] / stage))
  for other in ('four', 'one'):
    diff = _max_diff(two, checkpointing.load_params(str(runs[other] / stage)))
    print(f'{stage}: 2 processes vs {other}: max |param diff| {diff:.2e}')
    assert diff <= 1e-6, (stage, other, diff)
