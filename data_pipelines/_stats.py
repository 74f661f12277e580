"""Dataset statistics, including the length of the text-prompt history.

History tokens of a window = tokens of the history header + the sum of the tokens
of its U event lines, each line encoded on its own, exactly as `Example` builds
text prompts (before any truncation to max_prompt_tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipelines import _records, _tasks, _timelines
from data_pipelines._prepare import Prepared
from data_pipelines.tokenizer import Tokenizer

_COL = {c: i for i, c in enumerate(_timelines.COLUMNS)}


def statistics(prepared: Prepared, tokenizer: Tokenizer) -> dict[str, Any]:
  """Users, items, events, windows per split and text-prompt history tokens.

  Returns:
    dict with 'users', 'items', 'events', 'windows' (split -> count),
    'tokens_per_event' (mean over all events of kept users), and
    'history_tokens' (split -> {'mean', 'p95'}) over the windows of each split.
  """
  cat, ratings = prepared.catalogue, prepared.vocabs['rating']
  header = len(tokenizer.encode(_tasks.history_header(prepared.nouns)))
  u = prepared.history_len
  cumsums, all_lines = [], []
  for user in range(prepared.stats['users']):
    table, _, _ = _records.decode(prepared.timelines[user])
    lines = np.array([len(tokenizer.encode(_tasks.event_line(
        cat.all_names[r[_COL['item_index']]], cat.all_genres[r[_COL['item_index']]],
        ratings.value(int(r[_COL['rating']]))))) for r in table])
    all_lines.append(lines)
    cumsums.append(np.concatenate([[0], np.cumsum(lines)]))
  history = {}
  for split in _timelines.SPLITS:
    w = prepared.windows(split)
    # A left-padded (pad_short) history starts at the user's first event.
    tokens = np.array([header + cumsums[s][t] - cumsums[s][max(t - u, 0)] for s, t, _ in w])
    history[split] = ({'mean': float(tokens.mean()),
                       'p95': float(np.percentile(tokens, 95))} if len(tokens)
                      else {'mean': 0.0, 'p95': 0.0})
  return {
      'users': prepared.stats['users'],
      'items': prepared.stats['items'],
      'events': prepared.stats['events'],
      'windows': {s: prepared.num_records(s) for s in _timelines.SPLITS},
      'tokens_per_event': float(np.concatenate(all_lines).mean()),
      'history_tokens': history,
  }


def markdown_table(rows: list[tuple[int, dict[str, Any]]]) -> str:
  """A markdown table with one row per (history_len, statistics)."""
  out = ['| history_len | users | items | events | train | validation | test | '
         'tokens/event | history tokens mean (train) | p95 (train) | '
         'mean (test) | p95 (test) |',
         '|' + '---|' * 12]
  for history_len, s in rows:
    h = s['history_tokens']
    out.append(
        f"| {history_len} | {s['users']} | {s['items']} | {s['events']} | "
        f"{s['windows']['train']} | {s['windows']['validation']} | "
        f"{s['windows']['test']} | {s['tokens_per_event']:.1f} | "
        f"{h['train']['mean']:.0f} | {h['train']['p95']:.0f} | "
        f"{h['test']['mean']:.0f} | {h['test']['p95']:.0f} |")
  return '\n'.join(out)
