"""Incremental user memory == full re-encode of the same events (float32, <= 1e-5)."""

import dataclasses

from flax.core import FrozenDict
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import testing
from user_llm import decoding
from user_llm.models import user_encoder as ue
from user_llm.models import user_llm as ul
from user_llm.serving import incremental as inc

VOCABS = {'item': 20, 'genre': 6, 'rating': 7}
S = 8  # Encoder positions (max_len).
TOL = 1e-5


def _encoder(fusion='early', max_len=S, norm='pre'):
  return ue.UserEncoder(FrozenDict(VOCABS), FrozenDict(item=8, genre=4, rating=4), d_model=16,
                        num_heads=2, mlp_dim=32, max_len=max_len, fusion=fusion, norm=norm)


def _events(n, seed=0):
  rng = np.random.default_rng(seed)
  return {f: rng.integers(2, v, n).astype(np.int32) for f, v in VOCABS.items()}


def _batch(events, lo=0, hi=None):
  return {f: jnp.asarray(v[lo:hi])[None] for f, v in events.items()}


def _perturbed(params, seed=1):
  """Gates and weights away from init: tanh(0) gates would hide the memory."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


@pytest.mark.parametrize('fusion,norm', [('early', 'pre'), ('late', 'pre'), ('early', 'post')])
def test_encoder_cache_equals_full_call(fusion, norm):
  enc = _encoder(fusion, norm=norm)
  events = _events(S)
  params = enc.init(jax.random.PRNGKey(0), _batch(events), jnp.ones((1, S), bool))['params']
  full = lambda n: enc.apply({'params': params}, _batch(events, 0, n), jnp.ones((1, n), bool))
  # One event at a time.
  cache = ue.init_cache(enc, 1)
  for t in range(S):
    h, cache = enc.apply({'params': params}, _batch(events, t, t + 1), jnp.ones((1, 1), bool),
                         cache=cache)
    assert _max_diff(h[0, 0], full(t + 1)[0, t]) <= TOL, t
  assert int(cache[enc.transformer_names[0]]['index'][0]) == S
  # Chunks of 3 and 5 events, the second chunk right-padded to 8 (a bucket).
  cache = ue.init_cache(enc, 1)
  h1, cache = enc.apply({'params': params}, _batch(events, 0, 3), jnp.ones((1, 3), bool),
                        cache=cache)
  padded = {f: jnp.pad(v, ((0, 0), (0, 3))) for f, v in _batch(events, 3, S).items()}
  h2, cache = enc.apply({'params': params}, padded, jnp.arange(8)[None] < 5, cache=cache)
  assert _max_diff(jnp.concatenate([h1, h2[:, :5]], 1), full(S)) <= TOL
  assert int(cache[enc.transformer_names[0]]['index'][0]) == S


def test_encoder_cache_with_time_features_equals_full_call():
  """Appended events' gaps read the last held timestamp (carried in the cache), so
  event-time features give the same outputs cached as in a full call."""
  enc = ue.UserEncoder(FrozenDict(VOCABS), FrozenDict(item=8, genre=4, rating=4, gap=4, year=4),
                       d_model=16, num_heads=2, mlp_dim=32, max_len=S,
                       time_features=('gap', 'year'))
  events = _events(S)
  gaps = np.asarray([0, 5, 5000, 0, 3, 10 ** 6, 60, 10 ** 7], np.int64)
  events['timestamp'] = (1_000_000_000 + np.cumsum(gaps)).astype(np.int32)
  params = _perturbed(enc.init(jax.random.PRNGKey(0), _batch(events), jnp.ones((1, S), bool))['params'])
  full = enc.apply({'params': params}, _batch(events), jnp.ones((1, S), bool))
  cache = ue.init_cache(enc, 1)
  for t in range(S):
    if t == 5:  # The carried timestamp matters: another one changes the new event's gap.
      other = dict(cache, transformer=dict(cache['transformer'], last_timestamp=jnp.asarray(
          events['timestamp'][t - 1:t] - 10 ** 8)))
      h, _ = enc.apply({'params': params}, _batch(events, t, t + 1), jnp.ones((1, 1), bool),
                       cache=other)
      assert _max_diff(h[0, 0], full[0, t]) > 1e-3
    h, cache = enc.apply({'params': params}, _batch(events, t, t + 1), jnp.ones((1, 1), bool),
                         cache=cache)
    assert _max_diff(h[0, 0], full[0, t]) <= TOL, t
    assert int(cache['transformer']['last_timestamp'][0]) == events['timestamp'][t]
  cache = ue.init_cache(enc, 1)  # Chunks of 3 and 5, the second right-padded to 8.
  h1, cache = enc.apply({'params': params}, _batch(events, 0, 3), jnp.ones((1, 3), bool),
                        cache=cache)
  padded = {f: jnp.pad(v, ((0, 0), (0, 3))) for f, v in _batch(events, 3, S).items()}
  h2, cache = enc.apply({'params': params}, padded, jnp.arange(8)[None] < 5, cache=cache)
  assert _max_diff(jnp.concatenate([h1, h2[:, :5]], 1), full) <= TOL
  assert int(cache['transformer']['last_timestamp'][0]) == events['timestamp'][-1]


def test_bidirectional_encoder_has_no_cache():
  enc = dataclasses.replace(_encoder(), causal=False)
  events = _events(2)
  params = enc.init(jax.random.PRNGKey(0), _batch(events), jnp.ones((1, 2), bool))['params']
  with pytest.raises(ValueError, match='causal'):
    enc.apply({'params': params}, _batch(events), jnp.ones((1, 2), bool),
              cache=ue.init_cache(enc, 1))


def _userllm(mode, num_latents):
  # A local window wider than every sequence here: gm's sliding window counts cache
  # slots, and the S-slot memory's empty slots would otherwise shift it.
  cfg = dataclasses.replace(testing.tiny_gemma_config(), sliding_window_size=64)
  model = ul.UserLLM(cfg, _encoder(), mode=mode, xattn_layers=(0, 2), num_latents=num_latents)
  events = _events(S)
  params = model.init(jax.random.PRNGKey(0), _batch(events), jnp.ones((1, S), bool),
                      jnp.array([[2, 5, 9, 11]]), method='init_all')['params']
  return model, _perturbed(params), events


def _slots(tree, n):
  """The first n slots of every [B, S, ...] leaf."""
  return jax.tree.map(lambda x: x[:, :n], tree)


@pytest.mark.parametrize('mode,latents', [('cross_attention', 0), ('cross_attention', 3),
                                          ('soft_prompt', 0)])
def test_memory_appended_event_by_event_equals_reencode(mode, latents):
  model, params, events = _userllm(mode, latents)
  state = inc.empty_state(model.user_encoder)
  user = inc.memory(model, params, state)
  prompts = jnp.array([[2, 7, 9, 4, 3]])
  for t in range(S):
    state, user = inc.append(model, params, state, _batch(events, t, t + 1),
                             jnp.ones((1, 1), bool), user)
    want = ul.user_inputs(model, params, _batch(events, 0, t + 1), jnp.ones((1, t + 1), bool))
    got = user if latents else _slots(user, t + 1)
    diffs = jax.tree.map(_max_diff, got, want)
    assert max(jax.tree.leaves(diffs)) <= TOL, (t, diffs)
    # The cached outputs match too, and empty slots stay masked.
    mask = user.get('memory_mask', user.get('prefix_mask'))
    assert bool(mask[0].sum() == (latents or t + 1))
    if t in (0, S - 1):  # And the decoder reads the S-slot memory as the short one.
      got_logits = decoding.prefill(model, params, prompts, user, 2).logits
      want_logits = decoding.prefill(model, params, prompts, want, 2).logits
      assert _max_diff(got_logits, want_logits) <= 1e-4, t
  # A memory built from the cached outputs alone (a restart) is the same again.
  again = inc.memory(model, params, state)
  assert max(jax.tree.leaves(jax.tree.map(_max_diff, again, user))) <= TOL


def _reference(mem, events, start, end):
  """Full re-encode of events[start:end] at positions 0..: outputs [n, E]."""
  enc = mem.encoder
  return enc.apply({'params': mem.params['user_encoder']}, _batch(events, start, end),
                   jnp.ones((1, end - start), bool))[0]


def test_long_history_policy_slides_and_reencodes():
  """max_len 8, keep 3: 1..8 events held incrementally, then the last 3 re-encoded, 4..8
  incremental, ... Every state equals the full re-encode of the events it holds."""
  model, params, events = _userllm('cross_attention', 0)
  events = _events(40, seed=3)
  mem = inc.IncrementalMemory(model, params, keep=3)
  state, user = mem.encode({f: v[:0] for f, v in events.items()}, with_memory=True)
  held_seq, reencoded = [], []
  for total in range(1, 31):
    recent = {f: v[max(total - S, 0):total] for f, v in events.items()}
    state, user, re = mem.extend(state, recent, 1, user)
    held = int(state.length[0])
    held_seq.append(held)
    reencoded.append(re)
    want = _reference(mem, events, total - held, total)
    assert _max_diff(state.outputs[0, :held], want) <= TOL, total
    want_user = ul.user_inputs(model, params, _batch(events, total - held, total),
                               jnp.ones((1, held), bool))
    assert max(jax.tree.leaves(jax.tree.map(_max_diff, _slots(user, held), want_user))) <= TOL
  assert held_seq[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 3, 4, 5, 6]
  assert reencoded.count(True) == 4  # At events 9, 15, 21, 27: one per max_len - keep.
  # Many events at once: the newest max_len are encoded from scratch.
  state, _, re = mem.extend(state, {f: v[30:40] for f, v in events.items()}, 10)
  assert re and int(state.length[0]) == S
  assert _max_diff(state.outputs[0], _reference(mem, events, 32, 40)) <= TOL


def test_policy_rules():
  p = inc.Policy(max_len=50, keep=25)
  assert p.after_append(49, 1) is None and p.after_append(50, 1) == 25
  assert p.after_append(40, 30) == 30 and p.after_append(0, 200) == 50
  with pytest.raises(ValueError, match='keep'):
    inc.Policy(max_len=8, keep=8)
  assert [inc.bucket(n, 50) for n in (1, 2, 3, 5, 9, 33, 50)] == [1, 2, 4, 8, 16, 50, 50]


def test_state_bytes_round_trip_and_digest():
  model, params, events = _userllm('cross_attention', 0)
  mem = inc.IncrementalMemory(model, params)
  state, _ = mem.encode({f: v[:5] for f, v in events.items()})
  blob = inc.state_to_bytes(state)
  back = inc.state_from_bytes(model.user_encoder, blob)
  # The held slots come back exactly (the free ones are never read, so not stored) ...
  same = lambda a, b: bool(jnp.array_equal(a[:, :5] if a.ndim > 1 else a,
                                           b[:, :5] if b.ndim > 1 else b))
  assert jax.tree.all(jax.tree.map(same, back, state))
  # ... and the next event encodes the same from either.
  nxt = {f: v[5:6] for f, v in events.items()}
  a, _, _ = mem.extend(state, nxt, 1)
  b, _, _ = mem.extend(back, nxt, 1)
  assert jnp.array_equal(a.outputs[:, :6], b.outputs[:, :6])
  with pytest.raises(ValueError, match='does not fit'):
    inc.state_from_bytes(_encoder(max_len=4), blob)
  changed = jax.tree.map(lambda x: x, params['user_encoder'])
  changed['fuse']['bias'] = changed['fuse']['bias'] + 1e-3
  assert inc.params_digest(changed) != mem.digest
  assert inc.params_digest(params['user_encoder']) == mem.digest
