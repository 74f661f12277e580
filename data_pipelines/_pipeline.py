"""Grain pipelines: windows -> shuffle -> repeat -> process slice -> task -> batch.

    MapDataset(window index rows)        # (user record, target index, has_text)
      .shuffle(seed)                     # same permutation on every process,
      .repeat(num_epochs)                #   reshuffled each epoch (seed + epoch)
      process_rows(...)                  # this process's rows of each global batch
      .map(Example)                      # read timeline, build task, tokenise, pad
      .batch(batch_size // process_count)
      .to_iter_dataset()

Global batch i is shuffled elements [i*B, (i+1)*B); process p gets its contiguous
rows [p*B/P, (p+1)*B/P) of it (`process_rows`), so the per-process slice happens
without building the global batch, and the processes' slices concatenated in process
order are the one-process batch (`jax.make_array_from_process_local_data` order).
The returned IterDataset's iterator has get_state()/set_state(); save it with
orbax through grain.checkpoint.CheckpointSave / CheckpointRestore.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from data_pipelines import _records, _tasks, _timelines
from data_pipelines._prepare import Prepared
from data_pipelines._vocab import NUM_RESERVED
from data_pipelines.tokenizer import ByteTokenizer, Tokenizer

_COL = {c: i for i, c in enumerate(_timelines.COLUMNS)}


class Example:
  """Turns one window index row into a fixed-shape numpy example (a Grain map).

  U = history_len, the history events before the target; a window is U + 1 =
  `window_len` events (history + target).
  Stage 1 ('next_event'), the window: {feature}, timestamp int32[U+1], mask
  bool[U+1], user int32[], target_index int32[] (the target's index in the user's
  timeline), num_events int32[] (the timeline's length), example_mask bool[]; with `seen_items`, also seen bool[V_item] (True
  at every item id of the user's events before the target: the whole past, not
  only the window). A history shorter than U (data config pad_short) is
  left-padded: ids 0, mask False.
  Stage 2, the history only: {feature}, timestamp int32[U], mask bool[U], tokens
  int32[L], loss_mask bool[L], prompt_len int32[], answer_pos int32[A], answer_mask bool[A],
  target int32[], user, example_mask, where A = max_answer_tokens and
  L = max_prompt_tokens + A (see `_tasks.pack`).
  """

  def __init__(self, prepared: Prepared, task: str, features: tuple[str, ...],
               tokenizer: Tokenizer, text_prompt: bool, max_prompt_tokens: int,
               max_answer_tokens: int, seen_items: bool = False):
    if task not in _tasks.TASKS:
      raise ValueError(f'Unknown task {task!r}; expected one of {_tasks.TASKS}.')
    unknown = set(features) - set(_timelines.FEATURES)
    if unknown:
      raise ValueError(f'Unknown features {sorted(unknown)}; available: '
                       f'{_timelines.FEATURES}.')
    self.timelines = prepared.timelines
    self.history_len = prepared.history_len  # Settable (benchmarks/efficiency.py).
    self.task, self.features, self.tok = task, tuple(features), tokenizer
    self.text_prompt = text_prompt
    self.max_prompt, self.max_answer = max_prompt_tokens, max_answer_tokens
    self.nouns = prepared.nouns
    self.names = prepared.catalogue.all_names
    self.genres = prepared.catalogue.all_genres
    self.genre_vocab = prepared.vocabs['genre']
    self.ratings = prepared.vocabs['rating']
    self.stage1 = task in _tasks.STAGE1_TASKS
    self.seen_items = seen_items and self.stage1
    self.num_items = prepared.vocabs['item'].size
    # A history line depends only on (item, rating): memoise its tokens, which
    # makes text-prompt examples ~4x cheaper with SentencePiece.
    self._line_tokens: dict[tuple[int, int], list[int]] = {}

  @property
  def window_len(self) -> int:
    """Events of a window: the history_len events before the target, and the target."""
    return self.history_len + 1

  @property
  def _num_events(self) -> int:
    """Events in an example's features: the window in stage 1, the history in stage 2."""
    return self.window_len if self.stage1 else self.history_len

  def _padding(self) -> dict[str, np.ndarray]:
    n = self._num_events
    out = {f: np.zeros(n, np.int32) for f in self.features + ('timestamp',)}
    out.update(mask=np.zeros(n, bool), user=np.int32(0), target_index=np.int32(0),
               num_events=np.int32(0), example_mask=np.bool_(False))
    if self.seen_items:
      out['seen'] = np.zeros(self.num_items, bool)
    if not self.stage1:
      length = self.max_prompt + self.max_answer
      out.update(tokens=np.full(length, self.tok.pad_id, np.int32),
                 loss_mask=np.zeros(length, bool), prompt_len=np.int32(0),
                 target=np.int32(0), answer_pos=np.zeros(self.max_answer, np.int32),
                 answer_mask=np.zeros(self.max_answer, bool))
    return out

  def __call__(self, row: np.ndarray) -> dict[str, np.ndarray]:
    user, t = int(row[0]), int(row[1])
    if user < 0:  # Padding row of a final partial batch.
      return self._padding()
    table, offsets, blob = _records.decode(self.timelines[user])
    n = self._num_events
    start = max(t - self.history_len, 0)
    window = table[start:t - self.history_len + n]  # With the target in stage 1 only.
    pad = n - len(window)  # Left padding of a short history (pad_short).
    out = {f: np.pad(window[:, _COL[f]], (pad, 0)) for f in self.features}
    out['timestamp'] = np.pad(window[:, _COL['timestamp']], (pad, 0))
    out.update(mask=np.arange(n) >= pad, user=np.int32(user), target_index=np.int32(t),
               num_events=np.int32(len(table)), example_mask=np.bool_(True))
    if self.seen_items:
      out['seen'] = np.zeros(self.num_items, bool)
      out['seen'][table[:t, _COL['item']]] = True
    if not self.stage1:
      out.update(self._stage2(table, t, _records.text(offsets, blob, t)))
    return out

  def _line(self, item_index: int, rating: int) -> list[int]:
    key = (item_index, rating)
    ids = self._line_tokens.get(key)
    if ids is None:
      if len(self._line_tokens) > 1_000_000:  # Bound memory on huge catalogues.
        self._line_tokens.clear()
      ids = self._line_tokens[key] = self.tok.encode(_tasks.event_line(
          self.names[item_index], self.genres[item_index], self.ratings.value(rating)))
    return ids

  def __getstate__(self):
    return dict(self.__dict__, _line_tokens={})

  def _stage2(self, table: np.ndarray, t: int, text: str) -> dict[str, Any]:
    target_index = table[t, _COL['item_index']]
    rows = table[max(t - self.history_len, 0):t]  # The (possibly short) history.
    if self.task == 'fav_genre':
      history = rows[:, _COL['item_index']]
      genre = _tasks.favourite_genre([self.genres[i] for i in history])
      answer, target = genre, self.genre_vocab.id(genre)
    elif self.task == 'next_item':
      answer, target = self.names[target_index], table[t, _COL['item']]
    else:
      answer, target = text, table[t, _COL['item']]
    tail = self.tok.encode(
        _tasks.question(self.task, self.nouns, self.names[target_index]))
    header, lines = [], []
    if self.text_prompt:
      header = self.tok.encode(_tasks.history_header(self.nouns))
      lines = [self._line(int(r[_COL['item_index']]), int(r[_COL['rating']]))
               for r in rows]
    prompt = _tasks.fit_prompt(header, lines, tail, self.max_prompt - 1)
    out = _tasks.pack(prompt, self.tok.encode(answer), self.tok.bos_id,
                      self.tok.eos_id, self.tok.pad_id, self.max_prompt,
                      self.max_answer)
    out['target'] = np.int32(target)
    return out


def item_examples(prepared: Prepared, tokenizer: Tokenizer, max_prompt_tokens: int,
                  max_answer_tokens: int) -> dict[str, np.ndarray]:
  """The next-item example of every item id, with no history: [BOS] question name [EOS].

  Stage 2's item alignment (`config.train.item_alignment`) teaches Gemma to name an
  item from its embedding alone with these; the question is next_item's, so the answer
  format is the one the task asks for. Rows 0/1 (pad, OOV) are all padding.

  Returns:
    tokens int32[V, L], answer_pos int32[V, A], answer_mask bool[V, A] (`_tasks.pack`,
    V = the item vocabulary, L = max_prompt_tokens + A, A = max_answer_tokens).
  """
  names = prepared.catalogue.names
  prompt = tokenizer.encode(_tasks.question('next_item', prepared.nouns, ''))
  rows = [_tasks.pack(prompt, tokenizer.encode(name), tokenizer.bos_id, tokenizer.eos_id,
                      tokenizer.pad_id, max_prompt_tokens, max_answer_tokens)
          for name in names[NUM_RESERVED:]]
  out = {k: np.stack([r[k] for r in rows]) for k in ('tokens', 'answer_pos', 'answer_mask')}
  pad = {k: np.zeros((NUM_RESERVED,) + v.shape[1:], v.dtype) for k, v in out.items()}
  pad['tokens'][:] = tokenizer.pad_id
  pad['answer_pos'][:] = 1
  return {k: np.concatenate([pad[k], out[k]]) for k in out}


def make_dataset(prepared: Prepared, split: str, task: str, *, batch_size: int,
                 seed: int = 0, tokenizer: Tokenizer | None = None,
                 shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool | None = None, process_index: int = 0,
                 process_count: int = 1, **overrides: Any) -> grain.IterDataset:
  """Batches of `task` examples from `split` of a prepared dataset.

  Args:
    prepared: the output of `prepare(config.data)`.
    split: 'train' | 'validation' | 'test'.
    task: 'next_event' (stage 1) or 'next_item' | 'fav_genre' | 'review'.
    batch_size: GLOBAL batch size B; each process yields B // process_count rows.
    seed: shuffle seed (same seed -> same batches).
    tokenizer: stage 2 only; defaults to GemmaTokenizer(config.tokenizer_path)
      when the data config names one, else ByteTokenizer.
    shuffle: shuffle the windows (reshuffled every epoch).
    num_epochs: None repeats forever.
    drop_remainder: drop a final partial batch; default True for 'train'. When
      False, each epoch is padded to a multiple of B with rows whose
      example_mask is False, so every batch has the same shape on every process.
    process_index, process_count: this process and the number of processes.
    **overrides: data-config fields to override (features, text_prompt,
      max_prompt_tokens, max_answer_tokens, seen_items).

  Returns:
    A grain.IterDataset of dicts of numpy arrays (shapes in docs/contracts.md).
  """
  config = dict(prepared.config, **overrides)
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} not divisible by process_count '
                     f'{process_count}.')
  if drop_remainder is None:
    drop_remainder = split == 'train'
  if tokenizer is None:
    from data_pipelines.tokenizer import make_tokenizer  # pylint: disable=g-import-not-at-top
    tokenizer = make_tokenizer(config.get('tokenizer_path') or None)
  windows = prepared.windows(split)
  if task == 'review':
    windows = windows[windows[:, 2] == 1]
  if not len(windows):
    raise ValueError(f'No {split} windows for task {task!r} in {prepared.root}.')
  if not drop_remainder:
    pad = -len(windows) % batch_size
    windows = np.concatenate([windows, np.full((pad, 3), -1, np.int32)])
  ds = grain.MapDataset.source(windows)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = process_rows(ds, batch_size, process_index, process_count)
  ds = ds.map(Example(prepared, task, tuple(config['features']), tokenizer,
                      bool(config['text_prompt']), int(config['max_prompt_tokens']),
                      int(config['max_answer_tokens']),
                      bool(config.get('seen_items', False))))
  ds = ds.batch(batch_size // process_count, drop_remainder=drop_remainder)
  multiple = int(config.get('trim_multiple', 0))
  # Trimming is per process, so it would give processes different shapes for one
  # global batch: multi-process runs keep the fixed budgets.
  if multiple and not (task in _tasks.STAGE1_TASKS or process_count > 1):
    ds = ds.map(lambda batch: trim_batch(batch, multiple))
  return ds.to_iter_dataset()


def process_rows(ds: grain.MapDataset, batch_size: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
  """Process `process_index`'s rows [p*b, (p+1)*b) of every global batch (b = B / P).

  Contiguous, not strided: `jax.make_array_from_process_local_data` puts process p's
  rows at global rows [p*b, (p+1)*b), so every process count sees the same global
  batch in the same order (dropout masks and sums match a one-process run). A final
  partial global batch is dropped.
  """
  if process_count == 1:
    return ds
  b = batch_size // process_count
  rows = grain.MapDataset.range(len(ds) // batch_size * b)
  return rows.map(lambda j: ds[(j // b) * batch_size + process_index * b + j % b])


def trim_batch(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """A stage-2 batch cut to its longest example, with its answer positions packed.

  tokens/loss_mask [B, L] -> [B, L'], L' the last real token of any row rounded up
  to `multiple`; examples are left-aligned and right-padded (`_tasks.pack`), so only
  padding goes. The N answer+EOS positions of the batch (row-major) are packed into
  answer_row/answer_pos/answer_mask [B, A'], A' = ceil(N / B) rounded up to
  `multiple // 2`, instead of [B, A] with A the longest answer: the loss needs
  logits only there, and the unembedding is the costliest part of a step.
  """
  def cut(n: int, full: int, m: int) -> int:
    return min(full, max(m, -(-n // m) * m))
  b, full = batch['tokens'].shape
  real = batch['tokens'] != 0
  ends = np.where(real.any(1), full - np.argmax(real[:, ::-1], axis=1), 0)
  length = cut(int(ends.max()), full, multiple)
  rows, cols = np.nonzero(batch['answer_mask'])
  n = len(rows)
  answer = cut(-(-n // b), batch['answer_mask'].shape[1], max(1, multiple // 2))
  out = dict(batch, tokens=batch['tokens'][:, :length], loss_mask=batch['loss_mask'][:, :length])
  out['answer_row'] = np.zeros(b * answer, np.int32)
  out['answer_pos'] = np.ones(b * answer, np.int32)  # Padding: any position >= 1.
  out['answer_mask'] = np.zeros(b * answer, bool)
  out['answer_row'][:n], out['answer_pos'][:n] = rows, batch['answer_pos'][rows, cols]
  out['answer_mask'][:n] = True
  for k in ('answer_row', 'answer_pos', 'answer_mask'):
    out[k] = out[k].reshape(b, answer)
  return out
