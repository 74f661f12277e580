"""The model side of serving: users' events in, memory kept, batched answers out.

`Engine` owns a loaded stage-2 run (`generation.load_run`), the store and the
incremental memory:
  add_events   resolves items (raw id or title; unknown ones are OOV and reported),
               appends them to the user's encoder state (`IncrementalMemory.extend`:
               incremental, or a re-encode past the position table) and commits
               events + state in one durable transaction.
  run_batch    answers asks of one group (same sampling options) with ONE
               `decoding.generate` call, padded to a bucketed batch size and a prompt
               length multiple of 32, so a few shapes are compiled once.
The stage-2 memory of an ask (projection, Perceiver, cross-attention K/V or soft
prompt) is `incremental.memory` of the stored encoder state, cached per user and
event count: it is about 1% of an answer's cost, and an answer then depends on the
stored bits only, so it is identical after a restart. A cached state of another
encoder (digest) is never used: the same kept events are re-encoded and written back.

Letters: B batch (asks), L prompt tokens, T new tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from user_llm import decoding
from user_llm import generation
from user_llm.serving import incremental as inc
from user_llm.serving import store as store_lib

OOV_ID = 1  # data_pipelines' OOV id of every vocabulary.


class UnknownUser(KeyError):
  """A user with no stored event."""


class PromptTooLong(ValueError):
  """A prompt over the server's token budget."""


def batch_bucket(n: int, cap: int) -> int:
  """Padded batch of n asks: 1, 2, 4, 8, ... at most `cap`."""
  return inc.bucket(n, cap)


class Items:
  """Names -> feature ids of the served run: an item by raw id (e.g. MovieLens movieId)
  or title; its genre feature is the item's first genre (as in training)."""

  def __init__(self, prepared):
    cat = prepared.catalogue
    genres = prepared.vocabs['genre']
    self._vocab = prepared.vocabs['item']
    self._ratings = prepared.vocabs['rating']
    self._names = cat.names
    self._genre_of = [ids[0] if ids else OOV_ID for ids in cat.genre_ids]
    # Items the catalogue knows but training never saw: OOV item, known genre.
    self._titles = {name: (OOV_ID, genres.id(g[0]) if g else OOV_ID)
                    for name, g in zip(cat.all_names, cat.all_genres)}
    self._titles.update({name: (i, self._genre_of[i]) for i, name in enumerate(cat.names)
                         if i > OOV_ID})

  def resolve(self, item: str) -> tuple[int, int, str | None]:
    """(item id, genre id, title or None if unknown); OOV ids for unknown items."""
    i = self._vocab.id(item)
    if i != OOV_ID:
      return i, self._genre_of[i], self._names[i]
    if item in self._titles:
      return (*self._titles[item], item)
    return OOV_ID, OOV_ID, None

  def rating_id(self, stars: float | None) -> int:
    """Vocabulary id of a half-star rating (OOV when not given)."""
    return OOV_ID if stars is None else self._ratings.id(f'{stars:.1f}')

  def title(self, item_id: int) -> str | None:
    return self._names[item_id] if item_id > OOV_ID else None


@dataclasses.dataclass(frozen=True)
class Ask:
  """One question about one user."""

  user: str
  prompt_ids: tuple[int, ...]  # BOS + prompt tokens.
  max_new_tokens: int
  temperature: float = 0.0
  top_k: int = 0
  seed: int = 0
  with_memory: bool = True  # False: no user memory (benchmarks' text-prompt baseline).

  def group(self, max_new_cap: int) -> tuple:
    """Asks with the same key share a generate call: greedy ones always; sampled ones
    with the same options and seed (one rng per call)."""
    sampled = self.temperature > 0
    return (inc.bucket(self.max_new_tokens, max_new_cap), self.temperature,
            self.top_k if sampled else 0, self.seed if sampled else 0, self.with_memory)


class Engine:
  """See the module docstring. Thread-safe: the web app calls it from worker threads."""

  def __init__(self, exp, params, store: store_lib.Store, *, keep: int | None = None,
               max_batch: int = 32, max_prompt_tokens: int = 256, max_new_tokens: int = 128,
               memory_cache_users: int = 64):
    if exp.mode == 'text_prompt':
      raise ValueError('A text_prompt run has no user memory to serve; use a User-LLM run.')
    self.exp, self.model, self.params = exp, exp.model, params
    self.tokenizer = exp.tokenizer
    self.store = store
    self.memory = inc.IncrementalMemory(exp.model, params, keep)
    self.items = Items(exp.prepared)
    self.max_batch, self.max_prompt_tokens = max_batch, max_prompt_tokens
    self.max_new_tokens = max_new_tokens
    self.memory_cache_users = memory_cache_users  # LLM-side memories kept in RAM.
    self._cache: collections.OrderedDict[str, tuple[int, Any]] = collections.OrderedDict()
    self._cache_lock = threading.Lock()
    # Appends of one user run one at a time (striped locks: bounded memory).
    self._user_locks = [threading.Lock() for _ in range(64)]
    self.generate_calls = 0  # Read by tests and benchmarks.

  @property
  def digest(self) -> str:
    return self.memory.digest

  def _lock(self, user: str) -> threading.Lock:
    return self._user_locks[hash(user) % len(self._user_locks)]

  # ------------------------------------------------------------------ state
  def state(self, user: str, total: int) -> tuple[inc.EncoderState, int]:
    """The user's encoder state of all `total` stored events and its window start;
    re-encoded (and written back) when missing, of another encoder, or unreadable.
    Call it holding the user's lock, with `total` read under it."""
    cached = self.store.memory(user)
    if cached is not None and cached.digest == self.digest and cached.num_events == total:
      try:
        return inc.state_from_bytes(self.memory.encoder, cached.state), cached.window_start
      except ValueError:
        pass  # Same digest but another layout: re-encode below.
    max_len = self.memory.policy.max_len
    start = max(cached.window_start if cached else 0, total - max_len)
    state, _ = self.memory.encode(self.store.features(user, start, total))
    if total:
      self.store.put_memory(user, store_lib.CachedMemory(
          self.digest, start, total, inc.state_to_bytes(state)))
    return state, start

  def add_events(self, user: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Appends events ({'item', 'rating', 'timestamp'}, validated) to `user`; durable
    when it returns."""
    t0 = time.perf_counter()
    new, oov = [], []
    for e in events:
      item = str(e['item'])
      item_id, genre_id, _ = self.items.resolve(item)
      if item_id == OOV_ID:
        oov.append(item)
      ts = e.get('timestamp')
      new.append(store_lib.Event(item, item_id, genre_id, self.items.rating_id(e.get('rating')),
                                 e.get('rating'), int(time.time()) if ts is None else ts))
    with self._lock(user):
      before = self.store.num_events(user)
      state, _ = self.state(user, before)
      max_len = self.memory.policy.max_len
      recent = self.store.features(user, max(before - max_len, 0))
      for f, col in store_lib.FEATURE_COLUMNS.items():
        recent[f] = np.concatenate([recent[f], np.asarray([getattr(e, col) for e in new],
                                                          np.int32)])
      state, _, reencoded = self.memory.extend(state, recent, len(new))
      total = before + len(new)
      held = int(state.length[0])
      self.store.append(user, new, store_lib.CachedMemory(
          self.digest, total - held, total, inc.state_to_bytes(state)))
    with self._cache_lock:
      self._cache.pop(user, None)
    return {'user': user, 'added': len(new), 'num_events': total, 'oov': oov,
            'events_held': held, 'reencoded': reencoded,
            'latency_ms': round(1000 * (time.perf_counter() - t0), 2)}

  def describe(self, user: str, recent: int = 10) -> dict[str, Any]:
    """What GET /users/{id} returns."""
    with self._lock(user):  # No append in between: the count and the state agree.
      total = self.store.num_events(user)
      if not total:
        raise UnknownUser(user)
      state, start = self.state(user, total)
    events = self.store.events(user, max(total - recent, 0), total)
    return {
        'user': user, 'num_events': total,
        'memory': {'window_start': start, 'events_held': int(state.length[0]),
                   'max_len': self.memory.policy.max_len, 'keep': self.memory.policy.keep,
                   'encoder_digest': self.digest},
        'recent_events': [
            {'seq': total - len(events) + i, 'item': e.item, 'title': self.items.title(e.item_id),
             'oov': e.item_id == OOV_ID, 'rating': e.rating, 'timestamp': e.timestamp}
            for i, e in enumerate(events)],
    }

  def user_inputs(self, user: str) -> dict[str, Any]:
    """The user's `user_llm.user_inputs` (B = 1), from the stored encoder state."""
    with self._lock(user):  # No append in between: the count and the state agree.
      total = self.store.num_events(user)
      if not total:
        raise UnknownUser(user)
      with self._cache_lock:
        hit = self._cache.get(user)
        if hit is not None and hit[0] == total:
          self._cache.move_to_end(user)
          return hit[1]
      state, _ = self.state(user, total)
    inputs = inc.memory(self.model, self.params, state)
    with self._cache_lock:
      self._cache[user] = (total, inputs)
      while len(self._cache) > self.memory_cache_users:
        self._cache.popitem(last=False)
    return inputs

  # ------------------------------------------------------------------ asks
  def prompt_ids(self, prompt: str) -> tuple[int, ...]:
    """BOS + tokens of a prompt; PromptTooLong past `max_prompt_tokens`."""
    ids = generation.prompt_ids(self.tokenizer, prompt)
    if len(ids) > self.max_prompt_tokens:
      raise PromptTooLong(f'The prompt has {len(ids)} tokens (BOS included), more than this '
                          f'server\'s max_prompt_tokens={self.max_prompt_tokens}.')
    return tuple(ids)

  def run_batch(self, asks: list[Ask]) -> list[dict[str, Any]]:
    """Answers asks of one `Ask.group` with one `decoding.generate` call."""
    if not asks or len(asks) > self.max_batch:
      raise ValueError(f'{len(asks)} asks: a batch holds 1 .. {self.max_batch}.')
    if len({a.group(self.max_new_tokens) for a in asks}) != 1:
      raise ValueError('Asks of different groups (sampling options) in one batch.')
    t0 = time.perf_counter()
    first = asks[0]
    size = batch_bucket(len(asks), self.max_batch)
    rows = asks + [first] * (size - len(asks))  # Padding rows repeat the first ask.
    user = None
    if first.with_memory:
      per_user = {a.user: self.user_inputs(a.user) for a in asks}
      user = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0),
                          *[per_user[a.user] for a in rows])
    prompts = generation.padded_prompts([list(a.prompt_ids) for a in rows])
    new_tokens = inc.bucket(first.max_new_tokens, self.max_new_tokens)
    out = decoding.generate(
        self.model, self.params, prompts, user, max_new_tokens=new_tokens,
        rng=jax.random.PRNGKey(first.seed),
        sampling=generation.sampling_method(first.temperature, first.top_k),
        stop_tokens=tuple(self.tokenizer.stop_ids))
    self.generate_calls += 1
    out = np.asarray(out)[:len(asks)]
    tokens = decoding.trim(out, self.tokenizer.stop_ids)
    ms = round(1000 * (time.perf_counter() - t0), 2)
    return [{'user': a.user, 'answer': self.tokenizer.decode(t[:a.max_new_tokens]),
             'prompt_tokens': len(a.prompt_ids), 'new_tokens': len(t[:a.max_new_tokens]),
             'batch_size': len(asks), 'padded_batch': size, 'generate_ms': ms}
            for a, t in zip(asks, tokens)]
