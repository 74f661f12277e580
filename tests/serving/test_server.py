"""The HTTP API in-process (Starlette TestClient) on a tiny trained run."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from starlette.testclient import TestClient

from user_llm import decoding
from user_llm import generation
from user_llm.models import user_llm as ul
from user_llm.serving import engine as engine_lib
from user_llm.serving import incremental as inc
from user_llm.serving import server
from user_llm.serving import store as store_lib

ASK = {'prompt': 'Which movie will this user watch next?', 'max_new_tokens': 4}


def _engine(served_run, tmp_path, params=None, **kw):
  exp, run_params = served_run
  store = store_lib.Store(str(tmp_path / 'users.sqlite'))
  kw = {'max_batch': 8, 'max_prompt_tokens': 64, 'max_new_tokens': 8, **kw}
  return engine_lib.Engine(exp, run_params if params is None else params, store, **kw)


@pytest.fixture
def engine(served_run, tmp_path):
  return _engine(served_run, tmp_path)


def test_events_ask_and_user(engine, served_run):
  exp, params = served_run
  names = exp.prepared.catalogue.names
  raw_id = exp.prepared.vocabs['item'].values[0]  # A MovieLens movieId, as a string.
  with TestClient(server.make_app(engine)) as client:
    r = client.post('/users/alice/events', json={'item': names[2], 'rating': 4.5})
    assert r.status_code == 200, r.text
    assert r.json()['num_events'] == 1 and r.json()['oov'] == []
    r = client.post('/users/alice/events', json={'events': [
        {'item': int(raw_id), 'rating': 3.0, 'timestamp': 1_700_000_000},
        {'item': 'A Film Nobody Logged (2031)'},
        {'item': names[3], 'rating': 0.5}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body['num_events'] == 4 and body['added'] == 3
    assert body['oov'] == ['A Film Nobody Logged (2031)']
    user = client.get('/users/alice').json()
    assert user['num_events'] == 4 and user['memory']['events_held'] == 4
    assert [e['title'] for e in user['recent_events']] == [
        names[2], names[exp.prepared.vocabs['item'].id(raw_id)], None, names[3]]
    assert [e['oov'] for e in user['recent_events']] == [False, False, True, False]
    assert user['recent_events'][1]['timestamp'] == 1_700_000_000
    r = client.post('/users/alice/ask', json=ASK)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert isinstance(answer['answer'], str) and answer['new_tokens'] <= 4
    health = client.get('/healthz').json()
    assert health['status'] == 'ok' and health['users'] == 1
    assert health['encoder_digest'] == engine.digest and health['max_len'] == 8

  # The served answer is the one-shot decode of the same events' full re-encode.
  feats = engine.store.features('alice')
  want_user = ul.user_inputs(exp.model, params, {f: jnp.asarray(v)[None] for f, v in
                                                 feats.items()}, jnp.ones((1, 4), bool))
  ids = generation.prompt_ids(exp.tokenizer, ASK['prompt'])
  out = decoding.generate(exp.model, params, generation.padded_prompts([ids]), want_user,
                          max_new_tokens=4, stop_tokens=tuple(exp.tokenizer.stop_ids))
  want = exp.tokenizer.decode(decoding.trim(np.asarray(out), exp.tokenizer.stop_ids)[0])
  assert answer['answer'] == want


def test_errors_are_json_4xx(engine):
  with TestClient(server.make_app(engine)) as client:
    r = client.post('/users/nobody/ask', json=ASK)
    assert r.status_code == 404 and 'Unknown user' in r.json()['error']
    assert client.get('/users/nobody').status_code == 404
    for bad in ({'rating': 4.0}, {'item': 'x', 'rating': 7}, {'item': 'x', 'rating': 4.2},
                {'item': 'x', 'color': 'red'}, {'events': []}, {'item': ''},
                {'item': 'x', 'timestamp': -5}, [1, 2]):
      r = client.post('/users/bob/events', json=bad)
      assert r.status_code == 422, (bad, r.text)
      assert r.json()['error'].startswith('Malformed event'), r.json()
    r = client.post('/users/bob/events', content=b'{not json', headers={
        'content-type': 'application/json'})
    assert r.status_code == 400 and 'not JSON' in r.json()['error']
    assert client.post('/users/bob/events', json={'item': 'x'}).status_code == 200
    r = client.post('/users/bob/ask', json={'prompt': 'why ' * 100})
    assert r.status_code == 413 and 'max_prompt_tokens=64' in r.json()['error']
    r = client.post('/users/bob/ask', json={**ASK, 'max_new_tokens': 9})
    assert r.status_code == 422
    r = client.post('/users/bob/ask', json={'prompt': ''})
    assert r.status_code == 422 and r.json()['error'].startswith('Malformed ask')


def test_concurrent_asks_share_one_generate_call(engine, monkeypatch):
  calls = []
  real = decoding.generate

  def counting(model, params, prompts, user, **kw):
    calls.append(prompts.shape)
    return real(model, params, prompts, user, **kw)

  monkeypatch.setattr(decoding, 'generate', counting)
  app = server.make_app(engine, batch_wait_ms=2000)  # Room for 5 threads to arrive.
  with TestClient(app) as client:
    for u in range(5):
      client.post(f'/users/u{u}/events', json={'events': [{'item': f'{i}'} for i in range(u + 1)]})
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
      replies = list(pool.map(lambda u: client.post(f'/users/u{u}/ask', json=ASK), range(5)))
  assert [r.status_code for r in replies] == [200] * 5
  assert len(calls) == 1 and calls[0][0] == 8  # 5 asks padded to the bucket 8.
  assert {r.json()['batch_size'] for r in replies} == {5}
  # Batched answers equal answers asked alone (greedy; rows do not interact).
  with TestClient(server.make_app(engine)) as client:
    alone = client.post('/users/u3/ask', json=ASK).json()
  assert alone['answer'] == replies[3].json()['answer'] and alone['padded_batch'] == 1


def test_long_history_through_the_api(engine):
  """max_len 8, keep 4: the 9th event re-encodes the last 4; a 20-event post keeps 8."""
  with TestClient(server.make_app(engine)) as client:
    held = [client.post('/users/carol/events', json={'item': str(i)}).json()
            for i in range(10)]
    assert [h['events_held'] for h in held] == [1, 2, 3, 4, 5, 6, 7, 8, 4, 5]
    assert [h['reencoded'] for h in held].count(True) == 1
    r = client.post('/users/carol/events', json={'events': [{'item': str(i)} for i in range(20)]})
    assert r.json()['events_held'] == 8 and r.json()['num_events'] == 30
    assert client.get('/users/carol').json()['memory']['window_start'] == 22


def test_changed_encoder_never_serves_stale_memory(served_run, tmp_path, engine):
  exp, params = served_run
  with TestClient(server.make_app(engine)) as client:
    client.post('/users/dan/events', json={'events': [{'item': str(i)} for i in range(6)]})
  old = engine.store.memory('dan')
  assert old.digest == engine.digest
  # Another encoder checkpoint over the same store.
  params2 = dict(params)
  params2['user_encoder'] = jax.tree.map(lambda x: x * 1.01, params['user_encoder'])
  engine2 = _engine(served_run, tmp_path, params2)
  assert engine2.digest != engine.digest
  inputs = engine2.user_inputs('dan')
  new = engine2.store.memory('dan')
  assert new.digest == engine2.digest and new.window_start == old.window_start
  state = inc.state_from_bytes(exp.model.user_encoder, new.state)
  feats = {f: jnp.asarray(v)[None] for f, v in engine2.store.features('dan').items()}
  want = exp.model.user_encoder.apply({'params': params2['user_encoder']}, feats,
                                      jnp.ones((1, 6), bool))
  assert float(jnp.max(jnp.abs(state.outputs[:, :6] - want))) <= 1e-5
  want_inputs = ul.user_inputs(exp.model, params2, feats, jnp.ones((1, 6), bool))
  got = jax.tree.map(lambda x: x[:, :6], inputs)
  assert max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(jnp.asarray(a, float) - b))), got, want_inputs))) <= 1e-5
