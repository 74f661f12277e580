"""benchmarks/stage2_negatives.tables: rows scored under one protocol or both, and pairs."""

from benchmarks import stage2_negatives


def _hits(r1, r5, users):
  return {'recall@1': r1, 'recall@5': r5, 'recall@10': [1.0] * len(users), 'user': users}


def test_tables_take_uniform_only_rows_and_pair_them_per_protocol():
  users = [7, 7, 8, 9]  # Several targets per user: pairs are bootstrapped over users.
  both = {'uniform': _hits([1, 0, 0, 0], [1, 1, 1, 0], users),
          'popularity': _hits([0, 0, 0, 0], [1, 0, 0, 0], users)}
  uniform_only = {'uniform': _hits([0, 0, 0, 0], [1, 1, 0, 0], users), 'popularity': None}
  lines = stage2_negatives.tables({'a': both, 'b': uniform_only}, ['a:b'])
  row_b = next(l for l in lines if l.startswith('| b |'))
  assert row_b.count('n/a') == 3 and row_b.endswith('| 4 / 3 |')
  pairs = [l for l in lines if l.startswith('| a - b |')]
  # Only the protocol both rows were scored under is paired: R@5 differs on one target of 4.
  assert len(pairs) == 1 and '| uniform |' in pairs[0]
  assert pairs[0].split(' | ')[3].startswith('0.250')
