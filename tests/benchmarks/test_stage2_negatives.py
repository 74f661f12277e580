"""benchmarks/stage2_negatives.tables: rows scored under one protocol or both, and pairs.

Run in a subprocess: the module defines absl flags ('out', 'json') that other benchmark
modules imported by this pytest process define too."""

import subprocess
import sys

from user_llm import testing

CHILD = '''
from benchmarks import stage2_negatives


def hits(r1, r5, users):
  return {'recall@1': r1, 'recall@5': r5, 'recall@10': [1.0] * len(users), 'user': users}


users = [7, 7, 8, 9]  # Several targets per user: pairs are bootstrapped over users.
both = {'uniform': hits([1, 0, 0, 0], [1, 1, 1, 0], users),
        'popularity': hits([0, 0, 0, 0], [1, 0, 0, 0], users)}
uniform_only = {'uniform': hits([0, 0, 0, 0], [1, 1, 0, 0], users), 'popularity': None}
lines = stage2_negatives.tables({'a': both, 'b': uniform_only}, ['a:b'])
row_b = next(l for l in lines if l.startswith('| b |'))
assert row_b.count('n/a') == 3 and row_b.endswith('| 4 / 3 |'), row_b
pairs = [l for l in lines if l.startswith('| a - b |')]
# Only the protocol both rows were scored under is paired: R@5 differs on one target of 4.
assert len(pairs) == 1 and '| uniform |' in pairs[0], pairs
assert pairs[0].split(' | ')[3].startswith('0.250'), pairs[0]
print('OK')
'''


def test_tables_take_uniform_only_rows_and_pair_them_per_protocol():
  proc = subprocess.run([sys.executable, '-c', CHILD], env=testing.launcher_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr[-2000:]
