"""`python -m launch.serve` killed with SIGKILL and restarted answers identically."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from user_llm import testing

ASK = {'prompt': 'Which movie will this user watch next?', 'max_new_tokens': 6}


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(workdir, store, port, log):
  proc = subprocess.Popen(
      [sys.executable, '-m', 'launch.serve', f'--workdir={workdir}', f'--store={store}',
       f'--port={port}', '--max_new_tokens=8', '--max_prompt_tokens=64'],
      cwd=str(testing.ROOT), env=testing.launcher_env(), stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 600
  while time.time() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f'launch.serve exited with {proc.returncode}: see {log.name}')
    with contextlib.suppress(httpx.HTTPError):
      if httpx.get(f'http://127.0.0.1:{port}/healthz', timeout=5).status_code == 200:
        return proc
    time.sleep(0.5)
  proc.kill()
  raise TimeoutError(f'launch.serve did not answer /healthz: see {log.name}')


def test_sigkill_and_restart_answers_identically(served_workdir, tmp_path):
  store, port = tmp_path / 'users.sqlite', _free_port()
  url = f'http://127.0.0.1:{port}'
  with open(tmp_path / 'serve.log', 'w') as log:
    proc = _start(served_workdir, store, port, log)
    try:
      acked = []
      for user, items in (('ann', ['1', '2', '3']), ('ben', ['Movie 4 (1994)', '9', 'nope'])):
        for item in items:  # One request per event: each is acknowledged on its own.
          r = httpx.post(f'{url}/users/{user}/events', json={'item': item, 'rating': 4.0},
                         timeout=120)
          assert r.status_code == 200, r.text
          acked.append((user, r.json()['num_events']))
      before = {u: httpx.get(f'{url}/users/{u}', timeout=60).json() for u in ('ann', 'ben')}
      answers = {u: httpx.post(f'{url}/users/{u}/ask', json=ASK, timeout=300).json()['answer']
                 for u in ('ann', 'ben')}
    finally:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc = _start(served_workdir, store, port, log)
    try:
      after = {u: httpx.get(f'{url}/users/{u}', timeout=60).json() for u in ('ann', 'ben')}
      again = {u: httpx.post(f'{url}/users/{u}/ask', json=ASK, timeout=300).json()['answer']
               for u in ('ann', 'ben')}
      health = httpx.get(f'{url}/healthz', timeout=60).json()
    finally:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
  assert acked[-1] == ('ben', 3) and health['users'] == 2
  assert after == before
  assert again == answers
  assert after['ben']['recent_events'][-1]['oov']
