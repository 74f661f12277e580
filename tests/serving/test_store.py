"""The SQLite store: events + cached memory, one durable transaction per append."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from user_llm.serving import store as store_lib


def _event(i):
  return store_lib.Event(item=f'item {i}', item_id=2 + i % 7, genre_id=2 + i % 3,
                         rating_id=2 + i % 10, rating=None if i % 4 == 0 else 0.5 * (1 + i % 10),
                         timestamp=1_000_000 + i)


def _memory(total, digest='d1'):
  return store_lib.CachedMemory(digest, max(total - 4, 0), total, bytes([total % 256]) * 10)


def test_append_read_and_reopen(tmp_path):
  path = str(tmp_path / 'sub' / 'users.sqlite')
  s = store_lib.Store(path)
  assert s.num_events('u1') == 0 and s.memory('u1') is None
  assert s.append('u1', [_event(0), _event(1)], _memory(2)) == 2
  assert s.append('u1', [_event(2)], _memory(3)) == 3
  assert s.append('u2', [_event(5)], _memory(1, 'd2')) == 1
  assert s.events('u1') == [_event(0), _event(1), _event(2)]
  assert s.events('u1', 1, 2) == [_event(1)]
  feats = s.features('u1', 1)
  assert feats['item'].tolist() == [3, 4] and feats['rating'].tolist() == [3, 4]
  s.close()
  s = store_lib.Store(path)  # Reopened: everything is there.
  assert s.num_users() == 2 and s.num_events('u1') == 3
  assert s.memory('u1') == _memory(3) and s.memory('u2').digest == 'd2'


def test_stale_memory_is_refused_and_nothing_written(tmp_path):
  s = store_lib.Store(str(tmp_path / 'db'))
  s.append('u', [_event(0)], _memory(1))
  with pytest.raises(ValueError, match='stale'):
    s.append('u', [_event(1)], _memory(1))  # Describes 1 event, the store would hold 2.
  assert s.num_events('u') == 1 and s.memory('u') == _memory(1)
  with pytest.raises(ValueError, match='store holds 1'):
    s.put_memory('u', _memory(2))
  s.put_memory('u', _memory(1, 'd9'))
  assert s.memory('u').digest == 'd9'


_WRITER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    from tests_serving_store_helpers import event, memory
    from user_llm.serving import store as store_lib
    s = store_lib.Store({path!r})
    i = 0
    while True:
      user = f'u{{i % 5}}'
      n = 1 + i % 3
      total = s.num_events(user) + n
      start = total - n
      s.append(user, [event(start + j) for j in range(n)], memory(total))
      print(f'ack {{user}} {{total}}', flush=True)  # Only after the commit returned.
      i += 1
''')


def test_sigkill_loses_nothing_acknowledged(tmp_path):
  """A writer appends in a loop and acknowledges each commit on stdout; SIGKILL it
  mid-stream: every acknowledged event is there, and each memory matches its events."""
  path = str(tmp_path / 'db.sqlite')
  helpers = tmp_path / 'tests_serving_store_helpers.py'
  helpers.write_text(textwrap.dedent('''
      from user_llm.serving import store as store_lib
      def event(i):
        return store_lib.Event(f'item {i}', 2 + i % 7, 2 + i % 3, 2 + i % 10, None, i)
      def memory(total):
        return store_lib.CachedMemory('d', 0, total, total.to_bytes(4, 'little'))
  '''))
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  code = _WRITER.format(root=root, path=path)
  proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                          cwd=str(tmp_path), text=True)
  acked = {}
  try:
    for line in proc.stdout:
      _, user, total = line.split()
      acked[user] = int(total)
      if sum(acked.values()) >= 300:
        break
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert len(acked) == 5
  s = store_lib.Store(path)
  for user, total in acked.items():
    n = s.num_events(user)
    assert n >= total, (user, n, total)  # Possibly one more, committed but not yet acked.
    assert [e.timestamp for e in s.events(user)] == list(range(n))
    mem = s.memory(user)
    assert mem.num_events == n and int.from_bytes(mem.state, 'little') == n
