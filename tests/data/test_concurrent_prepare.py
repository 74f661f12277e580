"""Two processes preparing the same cache at once: one builds (under a file lock), the
other waits and reuses it; both get the same complete cache."""

import json
import os
import subprocess
import sys

from tests.data import review_fixtures as rf
from user_llm import testing

CHILD = '''
import json, sys, time
import data_pipelines as dp
from data_pipelines import _prepare
real = _prepare._build
def slow_build(*args):  # Holds the lock long enough for the other process to wait on it.
  print('BUILD', flush=True)
  time.sleep(2)
  return real(*args)
_prepare._build = slow_build
c = dp.default_data_config('amazon', sys.argv[1])
c.cache_dir, c.history_len = sys.argv[2], 10
print('READY', flush=True)
p = dp.prepare(c)
t, _, _ = p.timeline(p.stats['users'] - 1)
print(json.dumps({'root': p.root, 'stats': p.stats, 'last': t.tolist()}))
'''


def test_two_processes_prepare_one_cache(tmp_path):
  w = rf.write_release('amazon_2018', tmp_path / 'a')
  cache = tmp_path / 'cache'
  procs = [subprocess.Popen([sys.executable, '-c', CHILD, str(w.folder), str(cache)],
                            cwd=testing.ROOT, env=testing.launcher_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
  lines = [o.strip().splitlines() for o, _ in outs]
  assert sum(l.count('BUILD') for l in lines) == 1  # One build, one reuse.
  results = [json.loads(l[-1]) for l in lines]
  assert results[0] == results[1] and results[0]['stats']['users'] == 300
  root = results[0]['root']
  assert sorted(os.listdir(cache)) == sorted([os.path.basename(root),
                                              os.path.basename(root) + '.lock'])
