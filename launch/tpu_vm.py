r"""Runs `launch.main` on every worker of a Cloud TPU VM (gcloud; one command per step).

  python -m launch.tpu_vm up run --name=userllm --zone=us-west4-a \
      --accelerator_type=v5litepod-64 --bucket=my-bucket \
      --config=configs/movielens_userllm.py:model=Gemma3_1B --workdir=runs/userllm_1b
  python -m launch.tpu_vm logs --name=userllm --zone=us-west4-a    # stream again
  python -m launch.tpu_vm down --name=userllm --zone=us-west4-a    # delete the VM
Add --dry_run to print every command instead of running it (nothing is needed then).

Actions (in the order given):
  up    create the TPU VM, or reuse it if it exists; copy the repo (`git archive` of
        HEAD: the committed code the run's config.json refers to) and --data_dir to
        every worker's home; install from requirements.lock (uv, Python 3.12) plus jax's TPU
        wheel; mount --bucket with gcsfuse at ~/bucket on every worker.
  run   start `python -m launch.main` on all workers (--worker=all), detached (nohup:
        a dropped ssh does not stop training), then stream worker 0's log.
  logs  stream worker 0's log (tail -F).
  eval  evaluate the run's checkpoint with one process on worker 0 (a multi-host run
        only trains, see user_llm/train.py; use a single-host VM, e.g. v5litepod-8).
  down  delete the TPU VM.

Every worker runs the same command; `launch.main` finds the other workers itself
(user_llm/multihost.py: jax.distributed on a TPU VM). A multi-host run needs a
--workdir all workers share: with --bucket it lives in the gcsfuse mount
(~/bucket/WORKDIR), so Orbax checkpoints, TensorBoard and results.json land in GCS.
"""

from collections.abc import Sequence
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

ACTIONS = ('up', 'run', 'logs', 'eval', 'down')
# On every worker, relative to the home directory where `gcloud ... ssh` starts.
REPO = 'user_llm'  # The repo; launch.main runs here.
LOG = '$HOME/user_llm_run.log'  # launch.main's output on every worker.
ARCHIVE = '/tmp/user_llm.tar.gz'  # Local `git archive` of HEAD, copied to the workers.
# Hosts of a slice = chips / chips per host (v5e: 8 per host up to v5litepod-8, then 4;
# v4 / v5p: 4 per host, and their names count TensorCores, 2 per chip).
_CHIPS_PER_HOST = {'v4': 4, 'v5p': 4, 'v5litepod': 4, 'v6e': 4}

_NAME = flags.DEFINE_string('name', None, 'TPU VM name.')
_ZONE = flags.DEFINE_string('zone', None, 'GCP zone, e.g. us-west4-a.')
_PROJECT = flags.DEFINE_string('project', None, 'GCP project (default: gcloud config).')
_TYPE = flags.DEFINE_string('accelerator_type', 'v5litepod-8',
                            'v5litepod-8 (v5e-8), v5litepod-64, v5p-8, ...')
_VERSION = flags.DEFINE_string('version', 'v2-alpha-tpuv5-lite', 'TPU VM runtime image.')
_SPOT = flags.DEFINE_bool('spot', False, 'Create a Spot VM (preemptible; runs resume).')
_BUCKET = flags.DEFINE_string('bucket', None, 'GCS bucket mounted at ~/bucket (workdir).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Local data folder copied to the home of every worker (config.data.path).')
_CONFIG = flags.DEFINE_string('config', None, 'launch.main --config (file.py[:args]).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory, under ~/bucket with --bucket.')
_ARGS = flags.DEFINE_multi_string('arg', [], 'Extra launch.main flag, e.g. '
                                  '--arg=--config.train.num_steps=100 (repeatable).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')


def num_hosts(accelerator_type: str) -> int:
  """Workers of a TPU slice type ('v5litepod-64' -> 16; 'v5p-8' -> 1)."""
  family, _, size = accelerator_type.rpartition('-')
  chips = int(size) // (2 if family in ('v4', 'v5p') else 1)
  if family == 'v5litepod' and chips <= 8:
    return 1
  return max(1, chips // _CHIPS_PER_HOST.get(family, 4))


def _gcloud(verb: str, *args: str) -> str:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, _NAME.value, f'--zone={_ZONE.value}']
  if _PROJECT.value:
    cmd.append(f'--project={_PROJECT.value}')
  return shlex.join(cmd + list(args))


def _ssh(remote: str, worker: str = 'all') -> str:
  return _gcloud('ssh', f'--worker={worker}', f'--command={remote}')


def _main_command(extra: Sequence[str] = ()) -> str:
  """`python -m launch.main ...` as run in REPO on a worker (paths relative to REPO)."""
  workdir = f'../bucket/{_WORKDIR.value}' if _BUCKET.value else _WORKDIR.value
  args = [f'--workdir={workdir}', f'--config={_CONFIG.value}', *(_ARGS.value or []), *extra]
  if _DATA_DIR.value:
    args.append(f'--config.data.path=../{os.path.basename(os.path.normpath(_DATA_DIR.value))}')
  return shlex.join(['python', '-m', 'launch.main', *args])


def commands(action: str) -> list[str]:
  """The shell commands of one action (run here in order, or printed by --dry_run)."""
  venv = f'cd {REPO} && . .venv/bin/activate'
  if action == 'up':
    create = _gcloud('create', f'--accelerator-type={_TYPE.value}',
                     f'--version={_VERSION.value}', *(['--spot'] if _SPOT.value else []))
    out = [f'{_gcloud("describe", "--format=value(state)")} || {create}',
           f'git archive --format=tar.gz -o {ARCHIVE} HEAD',
           _gcloud('scp', '--worker=all', ARCHIVE, f'{_NAME.value}:')]
    if _DATA_DIR.value:
      out.append(_gcloud('scp', '--worker=all', '--recurse',
                         os.path.normpath(_DATA_DIR.value), f'{_NAME.value}:'))
    # README's install (uv, the lock, Python 3.12 fetched by uv), plus the TPU runtime
    # matching the locked jax.
    out.append(_ssh(
        f'mkdir -p {REPO} && tar xzf {os.path.basename(ARCHIVE)} -C {REPO} && cd {REPO} && '
        'python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --python 3.12 .venv '
        '&& . .venv/bin/activate && ~/.local/bin/uv pip install -q --compile-bytecode -r '
        'requirements.lock && ~/.local/bin/uv pip install -q --no-deps -e . && '
        '~/.local/bin/uv pip install -q "jax[tpu]==$(python -c \'import jax; '
        'print(jax.__version__)\')"'))
    if _BUCKET.value:  # gcsfuse from Google's apt repository, then the mount.
      out.append(_ssh(
          'command -v gcsfuse >/dev/null || { echo "deb https://packages.cloud.google.com/apt '
          'gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list '
          '&& curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add '
          '- && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; } && mkdir -p '
          f'bucket && (mountpoint -q bucket || gcsfuse --implicit-dirs '
          f'{shlex.quote(_BUCKET.value)} bucket)'))
    return out
  if action == 'run':
    if not (_CONFIG.value and _WORKDIR.value):
      raise app.UsageError('run needs --config and --workdir.')
    if num_hosts(_TYPE.value) > 1 and not _BUCKET.value:
      raise app.UsageError(f'{_TYPE.value} has {num_hosts(_TYPE.value)} workers: give '
                           '--bucket, so that they share the workdir (checkpoints).')
    # nohup, no stdin: a dropped ssh session does not stop training.
    return [_ssh(f'{venv} && nohup {_main_command()} < /dev/null > {LOG} 2>&1 &'),
            *commands('logs')]
  if action == 'logs':
    return [_ssh(f'tail -n +1 -F {LOG}', worker='0')]
  if action == 'eval':
    return [_ssh(f'{venv} && {_main_command(["--num_processes=1"])}', worker='0')]
  if action == 'down':
    return [_gcloud('delete', '--quiet')]
  raise app.UsageError(f'Unknown action {action!r}; expected {ACTIONS}.')


def main(argv):
  actions = argv[1:]
  if not actions:
    raise app.UsageError(f'Give one or more actions: {" ".join(ACTIONS)}.')
  if not (_NAME.value and _ZONE.value):
    raise app.UsageError('--name and --zone are required.')
  for action in actions:
    for cmd in commands(action):
      print(cmd, flush=True)
      if not _DRY_RUN.value:
        subprocess.run(['bash', '-c', cmd], check=True)


if __name__ == '__main__':
  app.run(main)
