"""Incremental user memory: new events are appended without re-encoding the history.

The user encoder is causal: its output at event t reads events <= t only. With a
per-layer KV cache (`user_encoder.init_cache`) k new events run as k new positions
against the cached history, and the stage-2 memory follows:
  encoder outputs       written into the new events' slots (`EncoderState.outputs`);
  projection + cross-attention K/V, or the soft prompt
                        computed for the new events only and written into their slots
                        (they act on each event alone);
  Perceiver latents     recomputed from all cached outputs (every latent reads every
                        event; exact, and no encoder run).
The reference is the full re-encode of the same kept events (`user_llm.user_inputs`);
tests/serving/test_incremental.py holds the two equal (max abs diff <= 1e-5, float32).

Layout. The kept events sit at encoder positions 0 .. n-1, oldest first (the learned
position table is indexed by slot). Training left-pads a short history (its events at
U-n .. U-1) and puts a full window's oldest event at 0, so the layouts agree for a user
with a full window (n = U = max_len); with fewer events the served outputs are those a
full training window has at its first n positions (causal: position t sees 0 .. t).

Long histories (`Policy`). The position table holds `max_len` events (the stage-1
run's history_len, 50 for configs/movielens_pretrain.py). While an append fits, it is
incremental. An append that would overflow re-encodes from scratch the last `keep`
events (or all the new ones if more, at most max_len); appends are incremental again
until the table is full. Amortised: one encode of `keep` events per max_len - keep
appended events; default keep = max_len // 2, so for 50 / 25 one extra encoder call
per 25 appends and about twice the FLOPs of a pure incremental append (each event is
encoded once incrementally and about once more by a re-encode). The memory then holds
between keep and max_len events. keep = max_len - 1 keeps the training layout (a full
window) at every step, at the price of a full re-encode per event once full.

Shapes never depend on a user: B users x S = max_len slots (empty slots masked), new
events padded to `bucket` sizes, so a few programs are compiled once.
Letters: B users, S slots (max_len), T new events, E encoder width.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from user_llm.models import user_encoder as ue
from user_llm.models import user_llm as ul


@flax.struct.dataclass
class EncoderState:
  """The encoded events of B users."""

  cache: dict[str, Any]  # `user_encoder.init_cache`: 'index' int32[B], K/V [B, S, N, H].
  outputs: jax.Array  # float[B, S, E]: encoder output of every held event.

  @property
  def length(self) -> jax.Array:
    """int32[B]: events held, in slots 0 .. length - 1."""
    return next(iter(self.cache.values()))['index']

  def slot_mask(self) -> jax.Array:
    """bool[B, S]: the held slots."""
    return jnp.arange(self.outputs.shape[1])[None] < self.length[:, None]


def empty_state(encoder: ue.UserEncoder, batch: int = 1) -> EncoderState:
  """B users holding no event."""
  return EncoderState(ue.init_cache(encoder, batch),
                      jnp.zeros((batch, encoder.max_len, encoder.d_model), encoder.dtype))


@functools.partial(jax.jit, static_argnames=('model',))
def memory(model: ul.UserLLM, params: Any, state: EncoderState) -> dict[str, Any]:
  """`user_llm.user_inputs` of the held events, from the cached outputs (S slots)."""
  return ul.user_inputs_from_embeddings(model, params, state.outputs, state.slot_mask())


# The state and memory are donated: the new rows are written in place (the memory of
# 1,000 events is ~50 MB for Gemma 3 270M; a copy per event would make an append's
# cost grow with the history). Callers use the returned ones.
@functools.partial(jax.jit, static_argnames=('model',), donate_argnames=('state', 'user'))
def append(model: ul.UserLLM, params: Any, state: EncoderState,
           features: Mapping[str, jax.Array], mask: jax.Array,
           user: dict[str, Any] | None = None) -> tuple[EncoderState, dict[str, Any] | None]:
  """Appends T new events per user after the held ones (they must fit in S).

  Args:
    model: the stage-2 `UserLLM` (static); params: its params.
    state: the users' encoded events.
    features: feature -> int32[B, T] ids of the new events, right-padded.
    mask: bool[B, T], True on the real new events.
    user: the users' current `memory(...)` to update, or None.

  Returns:
    (new state, updated user inputs or None); `state` and `user` are donated (invalid
    after the call).
  """
  index = state.length
  h, cache = model.user_encoder.apply({'params': params['user_encoder']}, features, mask,
                                      cache=state.cache)
  state = EncoderState(cache, ue.write_slots(state.outputs, h, index))
  if user is None:
    return state, None
  if model.num_latents:  # The latents read every event: recompute them.
    return state, memory(model, params, state)
  new = ul.user_inputs_from_embeddings(model, params, h, mask)
  return state, jax.tree.map(lambda old, rows: ue.write_slots(old, rows, index), user, new)


def bucket(n: int, cap: int) -> int:
  """The padded length of n new events: the next power of two, at most `cap`."""
  return min(1 << max(n - 1, 0).bit_length(), cap)


@dataclasses.dataclass(frozen=True)
class Policy:
  """Which events a user's memory holds (module docstring: long histories)."""

  max_len: int  # Slots of the encoder's position table.
  keep: int  # Events kept when an append overflows the table.

  def __post_init__(self):
    if not 1 <= self.keep < self.max_len:
      raise ValueError(f'keep={self.keep} must be in [1, max_len={self.max_len}).')

  def after_append(self, held: int, new: int) -> int | None:
    """None: append the new events incrementally; else the number of trailing events
    (new included) to re-encode from scratch."""
    if held + new <= self.max_len:
      return None
    return min(max(self.keep, new), self.max_len)


class IncrementalMemory:
  """Host side: keeps one user's `EncoderState` (B = 1) up to date under a `Policy`."""

  def __init__(self, model: ul.UserLLM, params: Any, keep: int | None = None):
    if model.user_encoder is None:
      raise ValueError('A text_prompt run has no user encoder to keep incrementally.')
    if not model.user_encoder.causal:
      raise ValueError('Incremental memory needs a causal (AR) user encoder.')
    self.model, self.params = model, params
    self.encoder = model.user_encoder
    max_len = self.encoder.max_len
    self.policy = Policy(max_len, keep or max_len // 2)
    self.digest = params_digest(params['user_encoder'])

  @property
  def features(self) -> tuple[str, ...]:
    """The event arrays the encoder reads ('timestamp' too with time features)."""
    return ue.input_names(sorted(self.encoder.vocab_sizes), self.encoder.time_features)

  def _run(self, state, events: Mapping[str, np.ndarray], user):
    """Appends `events` (feature -> int[n], n <= free slots) in one padded call."""
    n = len(next(iter(events.values())))
    t = bucket(n, self.policy.max_len)
    feats = {f: jnp.asarray(np.pad(np.asarray(events[f], np.int32), (0, t - n)))[None]
             for f in self.features}
    mask = jnp.asarray(np.arange(t) < n)[None]
    return append(self.model, self.params, state, feats, mask, user)

  def encode(self, events: Mapping[str, np.ndarray],
             with_memory: bool = False) -> tuple[EncoderState, dict[str, Any] | None]:
    """From scratch: the events (feature -> int[n], n <= max_len) at positions 0 .. n-1."""
    n = len(next(iter(events.values())))
    if n > self.policy.max_len:
      raise ValueError(f'{n} events > the encoder\'s {self.policy.max_len} positions.')
    state = empty_state(self.encoder)
    if n == 0:
      return state, memory(self.model, self.params, state) if with_memory else None
    state, _ = self._run(state, events, None)
    return state, memory(self.model, self.params, state) if with_memory else None

  def extend(self, state: EncoderState, recent: Mapping[str, np.ndarray], num_new: int,
             user: dict[str, Any] | None = None
             ) -> tuple[EncoderState, dict[str, Any] | None, bool]:
    """Adds a user's `num_new` newest events.

    Args:
      state: the user's state (B = 1).
      recent: feature -> int[m], the user's latest m events oldest first, the new
        ones last; m >= min(all events, max_len).
      num_new: how many of them are new.
      user: the user's current `memory`, updated too when given.

    Returns:
      (state, user memory or None, whether the history was re-encoded).
    """
    if num_new <= 0:
      return state, user, False
    held = int(state.length[0])
    kept = self.policy.after_append(held, num_new)
    if kept is None:
      new = {f: np.asarray(v)[len(v) - num_new:] for f, v in recent.items()}
      state, user = self._run(state, new, user)
      return state, user, False
    window = {f: np.asarray(v)[max(len(v) - kept, 0):] for f, v in recent.items()}
    state, user = self.encode(window, with_memory=user is not None)
    return state, user, True


def params_digest(params: Any) -> str:
  """sha256 over the paths, shapes, dtypes and bytes of a param tree: the version of
  everything cached from it (a changed checkpoint or architecture changes it)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    x = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}|{x.shape}|{x.dtype}|'.encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


def state_to_bytes(state: EncoderState) -> bytes:
  """One user's state (B = 1) as bytes: only the held slots (np.savez, exact)."""
  n = int(state.length[0])
  leaves = jax.tree.leaves(state)
  buf = io.BytesIO()
  np.savez(buf, **{f'a{i}': np.asarray(x)[:, :n] if x.ndim > 1 else np.asarray(x)
                   for i, x in enumerate(leaves)})
  return buf.getvalue()


def state_from_bytes(encoder: ue.UserEncoder, blob: bytes) -> EncoderState:
  """Inverse of `state_to_bytes` for `encoder`; ValueError if the arrays do not fit it."""
  template = empty_state(encoder)
  leaves, treedef = jax.tree.flatten(template)
  with np.load(io.BytesIO(blob)) as stored:
    if len(stored.files) != len(leaves):
      raise ValueError(f'Stored state has {len(stored.files)} arrays, the encoder '
                       f'{len(leaves)}.')
    out = []
    for i, t in enumerate(leaves):
      x = stored[f'a{i}']
      if x.ndim > 1:
        if x.shape[1] > t.shape[1] or x.shape[2:] != t.shape[2:]:
          raise ValueError(f'Stored array {i} {x.shape} does not fit {t.shape}.')
        x = np.pad(x, [(0, 0), (0, t.shape[1] - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
      if x.shape != t.shape or x.dtype != t.dtype:
        raise ValueError(f'Stored array {i} {x.shape} {x.dtype} does not fit '
                         f'{t.shape} {t.dtype}.')
      out.append(jnp.asarray(x))
  return jax.tree.unflatten(treedef, out)
