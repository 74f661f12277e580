"""launch/tpu_vm.py: the dry run prints every command, each a valid shell line whose
remote part is valid shell too; the local ones run; with a stand-in gcloud the same
commands run in order (create only when describe fails)."""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile

from user_llm import testing

VM = ['--name=userllm-test', '--zone=us-west4-a']
RUN = ['--config=configs/movielens_userllm.py:model=Gemma3_1B', '--workdir=runs/gemma1b',
       '--arg=--config.train.num_steps=100']


def _tpu_vm(*args: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'launch.tpu_vm', *args], cwd=testing.ROOT,
                        capture_output=True, text=True, timeout=120,
                        env=env or testing.launcher_env())


def _bash_syntax_ok(line: str) -> None:
  proc = subprocess.run(['bash', '-n', '-c', line], capture_output=True, text=True)
  assert proc.returncode == 0, (line, proc.stderr)


def _remote(argv: list[str]) -> str:
  return next(a for a in argv if a.startswith('--command=')).removeprefix('--command=')


def test_dry_run_prints_every_command(tmp_path):
  data = tmp_path / 'ml-latest-small'
  data.mkdir()
  proc = _tpu_vm('up', 'run', 'eval', 'down', '--dry_run', *VM,
                 '--accelerator_type=v5litepod-64', '--bucket=my-bucket',
                 f'--data_dir={data}', *RUN)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  for line in lines:
    _bash_syntax_ok(line)
  gcloud = [shlex.split(l) for l in lines if l.startswith('gcloud')]
  for argv in gcloud:
    assert argv[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm'] and argv[5:7] == [
        'userllm-test', '--zone=us-west4-a'], argv
  verbs = [(a[4], next((x for x in a if x.startswith('--worker=')), '')) for a in gcloud]
  assert verbs == [
      ('describe', ''),  # || create: one shell line.
      ('scp', '--worker=all'), ('scp', '--worker=all'),  # The repo, the data.
      ('ssh', '--worker=all'), ('ssh', '--worker=all'),  # Install, gcsfuse mount.
      ('ssh', '--worker=all'), ('ssh', '--worker=0'),  # Start launch.main, stream the log.
      ('ssh', '--worker=0'),  # Evaluate with one process.
      ('delete', '')], verbs
  assert '|| gcloud compute tpus tpu-vm create userllm-test' in lines[0]
  assert '--accelerator-type=v5litepod-64' in lines[0]
  for argv in gcloud:
    if argv[4] == 'ssh':
      _bash_syntax_ok(_remote(argv))
  install = _remote(gcloud[3])
  assert 'uv pip install -q --compile-bytecode -r requirements.lock' in install
  assert 'jax[tpu]' in install
  start = _remote(gcloud[5])
  assert 'nohup python -m launch.main' in start and start.endswith('&')
  main = shlex.split(start.split('nohup ')[1].split(' <')[0])
  assert main[:3] == ['python', '-m', 'launch.main']
  assert main[3:] == ['--workdir=../bucket/runs/gemma1b', RUN[0], '--config.train.num_steps=100',
                      '--config.data.path=../ml-latest-small']
  assert (testing.ROOT / RUN[0].split('=')[1].split(':')[0]).is_file()
  assert '--num_processes=1' in _remote(gcloud[7])
  # The local command runs: the archive holds the committed repo.
  archive = next(l for l in lines if l.startswith('git archive'))
  subprocess.run(['bash', '-c', archive], cwd=testing.ROOT, check=True)
  names = tarfile.open(archive.split('-o ')[1].split()[0]).getnames()
  assert {'launch/main.py', 'requirements.lock', 'setup.py'} <= set(names)


def test_multi_host_run_needs_a_bucket():
  proc = _tpu_vm('run', '--dry_run', *VM, '--accelerator_type=v5litepod-64', *RUN)
  assert proc.returncode != 0 and 'has 16 workers: give --bucket' in proc.stderr
  proc = _tpu_vm('run', '--dry_run', *VM, '--accelerator_type=v5p-8', *RUN)  # One host.
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_runs_the_commands_through_gcloud(tmp_path):
  """A stand-in gcloud records its calls; describe fails, so the VM is created."""
  calls = tmp_path / 'calls.jsonl'
  fake = tmp_path / 'bin' / 'gcloud'
  fake.parent.mkdir()
  fake.write_text(f'#!{sys.executable}\nimport json, sys\n'
                  f'open({str(calls)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
                  'sys.exit(1 if sys.argv[4] == "describe" else 0)\n')
  fake.chmod(0o755)
  env = testing.launcher_env(PATH=f'{fake.parent}{os.pathsep}{os.environ["PATH"]}')
  proc = _tpu_vm('up', 'run', 'down', *VM, '--accelerator_type=v5litepod-8', *RUN, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  verbs = [c[3] for c in map(json.loads, calls.read_text().splitlines())]
  assert verbs == ['describe', 'create', 'scp', 'ssh', 'ssh', 'ssh', 'delete'], verbs
