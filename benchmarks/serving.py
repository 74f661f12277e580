r"""Serving costs of a trained User-LLM run: appends, asks under load, memory per user.

  python -m benchmarks.serving --workdir workdirs/stage2_bench/xattn_L50
      [--lengths 50,200,1000] [--clients 1,8,32] [--users 1000] [--note "idle machine"]

Writes benchmarks/serving.md (and the raw numbers to workdirs/serving_bench/results.json):
1. Append latency at 50 / 200 / 1,000 held events: one new event through the KV-cached
   encoder and the memory update (`incremental.append`) against a full re-encode of the
   n events (`user_llm.user_inputs`, jitted), with the served encoder's weights and a
   position table of n rows (rows past the trained 50 are random: cost only). Also the
   served policy: max_len 50 and `keep` at 1,000 events, amortised over appends that
   include its re-encodes (`IncrementalMemory.extend`, the host path of the server).
2. Store and memory: `--users` users with a 50-event history each, added through
   `Engine.add_events` (the server's path: SQLite commit per request); disk bytes, the
   process's RSS growth, and the resident bytes of one user's state and LLM-side memory.
3. Asks: 1 / 8 / 32 concurrent clients, each asking `--asks_per_client` times in a row
   through the server's `Batcher` (one generate call per batch): latency p50 / p95 and
   answers per second, cached memory (the pipeline's next_item prompt, BOS + question)
   against the text prompt (the same users' histories serialised by the data pipeline,
   `data_pipelines.Example(text_prompt=True)`, no memory). A warm-up round per client
   count compiles the shapes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import data_pipelines as dp
from benchmarks.efficiency import machine
from user_llm import generation
from user_llm.models import user_llm as ul
from user_llm.serving import engine as engine_lib
from user_llm.serving import incremental as inc
from user_llm.serving import server
from user_llm.serving import store as store_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block(tree):
  jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, 'block_until_ready') else x, tree)
  return tree


def _median_ms(fn, runs: int) -> float:
  _block(fn())  # Compile / warm up.
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    _block(fn())
    times.append(time.perf_counter() - t0)
  return 1000 * statistics.median(times)


def _rss_bytes(field: str = 'VmRSS') -> int:
  with open('/proc/self/status') as f:
    line = next(l for l in f if l.startswith(field + ':'))
  return int(line.split()[1]) * 1024


def _nbytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def _with_positions(model: ul.UserLLM, params, n: int):
  """The model with an encoder of n positions: trained rows, then random ones."""
  enc = model.user_encoder.clone(max_len=n)
  params = jax.tree.map(lambda x: x, params)  # New dicts: the run's params stay.
  for name in enc.transformer_names:
    pos = params['user_encoder'][name]['pos_embedding']
    if n > pos.shape[0]:
      extra = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (n - pos.shape[0], pos.shape[1]))
      pos = jnp.concatenate([pos, extra.astype(pos.dtype)])
    params['user_encoder'][name]['pos_embedding'] = pos[:n]
  return model.clone(user_encoder=enc), params


def _rewind(state: inc.EncoderState) -> inc.EncoderState:
  """The state without its last event (its slots are then free to be written again)."""
  return inc.EncoderState({k: dict(v, index=v['index'] - 1) for k, v in state.cache.items()},
                          state.outputs)


def append_costs(exp, params, lengths, runs, keep, policy_appends) -> list[dict]:
  """Part 1 (module docstring)."""
  rng = np.random.default_rng(0)
  vocab = {f: exp.model.user_encoder.vocab_sizes[f] for f in exp.features}
  rows = []
  for n in lengths:
    model, p = _with_positions(exp.model, params, n)
    events = {f: rng.integers(2, v, n).astype(np.int32) for f, v in vocab.items()}
    mem = inc.IncrementalMemory(model, p)
    new = {f: jnp.asarray(v[n - 1:])[None] for f, v in events.items()}
    one = jnp.ones((1, 1), bool)
    feats = {f: jnp.asarray(v)[None] for f, v in events.items()}
    mask = jnp.ones((1, n), bool)
    full = jax.jit(lambda p, f, m, model=model: ul.user_inputs(model, p, f, m))
    enc_full = jax.jit(lambda p, f, m, model=model: model.user_encoder.apply(
        {'params': p['user_encoder']}, f, m))

    def appender(with_memory, model=model, p=p, new=new, one=one):
      """Appends event n again and again: `append` donates its inputs, so each call
      takes the previous call's outputs, rewound to n - 1 events (index - 1)."""
      carry = list(mem.encode({f: v[:n - 1] for f, v in events.items()},
                              with_memory=with_memory))

      def step():
        s, u = inc.append(model, p, carry[0], new, one, carry[1])
        carry[0], carry[1] = _rewind(s), u
        return s.outputs, u
      return step

    row = {
        'events': n,
        'incremental_ms': _median_ms(appender(True), runs),
        'full_ms': _median_ms(lambda: full(p, feats, mask), runs),
        'encoder_incremental_ms': _median_ms(appender(False), runs),
        'encoder_full_ms': _median_ms(lambda: enc_full(p, feats, mask), runs),
    }
    rows.append(row)
    print('append', row, flush=True)
  # The served encoder past its table: the sliding policy, amortised.
  mem = inc.IncrementalMemory(exp.model, params, keep)
  total, max_len, kept = 1000, mem.policy.max_len, mem.policy.keep
  events = {f: rng.integers(2, v, total).astype(np.int32) for f, v in vocab.items()}

  def appends(start: int, count: int) -> tuple[float, int]:
    """Seconds and re-encodes of `count` appends from a user who just re-encoded."""
    state, user = mem.encode({f: v[start - kept:start] for f, v in events.items()},
                             with_memory=True)
    t0, reencodes = time.perf_counter(), 0
    for t in range(start + 1, start + count + 1):
      state, user, re = mem.extend(state, {f: v[t - max_len:t] for f, v in events.items()},
                                   1, user)
      _block(user)
      reencodes += re
    return time.perf_counter() - t0, reencodes

  appends(max_len, max_len - kept + 1)  # Warm-up: compiles an append and a re-encode.
  seconds, reencodes = appends(total - policy_appends, policy_appends)
  full = jax.jit(lambda p, f, m: ul.user_inputs(exp.model, p, f, m))
  feats = {f: jnp.asarray(v[total - max_len:])[None] for f, v in events.items()}
  rows.append({'events': total, 'policy': f'max_len {max_len}, keep {kept}',
               'incremental_ms': 1000 * seconds / policy_appends, 'reencodes': reencodes,
               'appends': policy_appends, 'window': max_len,
               'full_ms': _median_ms(lambda: full(params, feats, jnp.ones((1, max_len), bool)),
                                     runs)})
  print('append policy', rows[-1], flush=True)
  return rows


def _histories(exp, count: int):
  """The first `count` test users: their history events (as a client posts them) and
  the pipeline's next_item prompts with and without the serialised history."""
  prepared, tok = exp.prepared, exp.tokenizer
  cat, ratings = prepared.catalogue, prepared.vocabs['rating']
  col = {c: i for i, c in enumerate(dp.COLUMNS)}
  examples = {text: dp.Example(prepared, 'next_item', exp.features, tok, text, 1 << 17, 32)
              for text in (False, True)}
  out = []
  for row in prepared.windows('test')[:count]:
    user, t = int(row[0]), int(row[1])
    table = prepared.timeline(user)[0]
    hist = table[max(t - prepared.history_len, 0):t]
    events = []
    for r in hist:
      value = ratings.value(int(r[col['rating']]))
      events.append({'item': cat.all_names[int(r[col['item_index']])],
                     'rating': float(value) if value[:1].isdigit() else None,
                     'timestamp': int(r[col['timestamp']])})
    prompts = {}
    for text, ex in examples.items():
      b = ex(np.asarray(row))
      prompts[text] = tuple(int(i) for i in b['tokens'][:int(b['prompt_len'])])
    out.append({'events': events, 'prompt': prompts[False], 'text_prompt': prompts[True]})
  return out


def store_costs(engine, histories, users: int) -> dict:
  """Part 2 (module docstring)."""
  rss0 = _rss_bytes()
  t0 = time.perf_counter()
  for u in range(users):
    engine.add_events(f'user{u}', histories[u % len(histories)]['events'])
  add_s = time.perf_counter() - t0
  for u in range(users):  # The LLM-side memory of each (an LRU keeps the newest).
    _block(engine.user_inputs(f'user{u}'))
  rss1 = _rss_bytes()
  disk = sum(os.path.getsize(engine.store.path + s) for s in ('', '-wal')
             if os.path.exists(engine.store.path + s))
  state, _ = engine.state('user0', engine.store.num_events('user0'))
  out = {'users': users, 'events_per_user': len(histories[0]['events']),
         'add_ms_per_user': 1000 * add_s / users, 'disk_bytes': disk,
         'rss_growth_bytes': rss1 - rss0, 'peak_rss_bytes': _rss_bytes('VmHWM'),
         'state_bytes': _nbytes(state), 'stored_state_bytes': len(engine.store.memory('user0').state),
         'llm_memory_bytes': _nbytes(engine.user_inputs('user0')),
         'memory_cache_users': engine.memory_cache_users}
  print('store', out, flush=True)
  return out


async def _load(app, asks_of, clients: int, per_client: int) -> dict:
  batcher = app.state.batcher

  async def client(c):
    lat = []
    for k in range(per_client):
      t0 = time.perf_counter()
      await batcher.submit(asks_of(c * per_client + k))
      lat.append(time.perf_counter() - t0)
    return lat

  async with app.router.lifespan_context(app):
    await asyncio.gather(*[client(c) for c in range(clients)])  # Warm-up: compiles.
    t0 = time.perf_counter()
    lats = sorted(sum(await asyncio.gather(*[client(c) for c in range(clients)]), []))
    wall = time.perf_counter() - t0
  return {'clients': clients, 'asks': len(lats), 'p50_ms': 1000 * float(np.percentile(lats, 50)),
          'p95_ms': 1000 * float(np.percentile(lats, 95)), 'answers_per_s': len(lats) / wall}


def ask_costs(engine, histories, clients_list, per_client, max_new_tokens, wait_ms) -> list[dict]:
  """Part 3 (module docstring)."""
  rows = []
  for kind in ('memory', 'text'):
    for clients in clients_list:
      def asks_of(i, kind=kind):
        u = i % len(histories)
        h = histories[u]
        return engine_lib.Ask(f'user{u}', h['prompt'] if kind == 'memory' else h['text_prompt'],
                              max_new_tokens, with_memory=kind == 'memory')
      row = asyncio.run(_load(server.make_app(engine, wait_ms), asks_of, clients, per_client))
      row['context'] = kind
      row['prompt_tokens'] = statistics.mean(
          len(h['prompt' if kind == 'memory' else 'text_prompt']) for h in histories)
      rows.append(row)
      print('ask', row, flush=True)
  return rows


def write_report(results: dict, path: str) -> None:
  _write_report(results, path)
  with open(path, 'a') as f:
    f.write('\n'.join(decode_speed_section()) + '\n')


def _write_report(results: dict, path: str) -> None:
  L = ['# Serving benchmark (benchmarks/serving.py)', '',
       f'Command: `{results["command"]}`', '', f'Machine: {results["machine"]}.',
       f'Run: {results["workdir"]} ({results["mode"]}), Gemma 3 270M, encoder digest '
       f'{results["digest"]}.', '']
  if results.get('note'):
    L += [f'**{results["note"]}**', '']
  L += ['## Append one event: incremental vs full re-encode', '',
        'Incremental = `incremental.append`: the new event through the KV-cached encoder, its '
        'projection and cross-attention K/V written into the memory. Full = `user_inputs` of '
        'all n events (encoder + projection + K/V), jitted. Median ms.', '',
        '| held events | incremental (encoder + memory) | full re-encode | full / incremental '
        '| encoder only: incremental | encoder only: full |', '|---|---|---|---|---|---|']
  for r in results['append']:
    if 'policy' in r:
      continue
    L.append(f'| {r["events"]} | {r["incremental_ms"]:.2f} | {r["full_ms"]:.2f} | '
             f'{r["full_ms"] / r["incremental_ms"]:.1f}x | {r["encoder_incremental_ms"]:.2f} | '
             f'{r["encoder_full_ms"]:.2f} |')
  for r in results['append']:
    if 'policy' in r:
      L += ['', f'Served policy ({r["policy"]}) at {r["events"]} events: {r["appends"]} appends '
            f'through `IncrementalMemory.extend` (host path, re-encodes included: '
            f'{r["reencodes"]}) '
            f'cost {r["incremental_ms"]:.2f} ms each on average, against '
            f'{r["full_ms"]:.2f} ms for a full re-encode of the {r["window"]}-event window.']
  s = results.get('store')
  if not s:
    return _write(path, L)
  per_k = 1000 / s['users']
  L += ['', '## Store and memory per 1,000 users', '',
        f'{s["users"]} users x {s["events_per_user"]} events added through `Engine.add_events` '
        f'({s["add_ms_per_user"]:.1f} ms per user: resolve, encode, one SQLite commit).', '',
        '| per 1,000 users | MB |', '|---|---|',
        f'| SQLite file (+ WAL) on disk | {s["disk_bytes"] * per_k / 1e6:.1f} |',

        f'| if every user stayed resident: encoder state | {s["state_bytes"] * 1000 / 1e6:.1f} |',
        f'| if every user stayed resident: LLM-side memory (cross-attention K/V) | '
        f'{s["llm_memory_bytes"] * 1000 / 1e6:.1f} |', '',
        f'The process\'s RSS grew by {s["rss_growth_bytes"] / 1e6:.1f} MB while adding '
        f'{s["users"]} users and computing each one\'s LLM-side memory (compiled programs and '
        f'the LLM-side memory LRU of '
        f'{s["memory_cache_users"]} users included): RAM is bounded by that LRU, not by the '
        'number of stored users. '
        f'One user: stored state {s["stored_state_bytes"] / 1e3:.1f} kB (held slots only), '
        f'resident encoder state {s["state_bytes"] / 1e3:.1f} kB, LLM-side memory '
        f'{s["llm_memory_bytes"] / 1e6:.2f} MB. Process peak RSS (model included): '
        f'{s["peak_rss_bytes"] / 2**30:.2f} GiB.']
  if not results['ask']:
    return _write(path, L)
  L += ['', '## Asks under load', '',
        f'Each client asks {results["asks_per_client"]} times in a row, '
        f'max_new_tokens={results["max_new_tokens"]} (greedy), through the server\'s batcher '
        f'(batch_wait_ms={results["batch_wait_ms"]}); after a warm-up round.', '',
        '| context | prompt tokens | clients | asks | p50 ms | p95 ms | answers/s |',
        '|---|---|---|---|---|---|---|']
  for r in results['ask']:
    L.append(f'| {"cached memory" if r["context"] == "memory" else "text prompt"} | '
             f'{r["prompt_tokens"]:.0f} | {r["clients"]} | {r["asks"]} | {r["p50_ms"]:.0f} | '
             f'{r["p95_ms"]:.0f} | {r["answers_per_s"]:.2f} |')
  _write(path, L)


def decode_speed_section(path: str = os.path.join(ROOT, 'benchmarks', 'decode_speed.md')
                         ) -> list[str]:
  """The batch-1 rows of benchmarks/decode_speed.md (its table, measured there: one home)."""
  if not os.path.exists(path):
    return []
  rows = [l for l in open(path).read().splitlines() if l.startswith('|')]
  if len(rows) < 3:
    return []
  batch_1 = [r for r in rows[2:] if r.split('|')[2].strip() == '1']
  return ['', '## Decode speed (from benchmarks/decode_speed.md)', '',
          'Greedy decoding of Gemma 3 270M, one sequence, against llama.cpp on the same '
          'model\'s 4-bit GGUF (`python -m benchmarks.decode_speed`; the server decodes in '
          'the stage-2 run\'s `llm.param_dtype`: bfloat16 for Enc / LoRA / Proj runs, the '
          '`bf16` row):', '', rows[0], rows[1], *batch_1]


def _write(path: str, lines: list[str]) -> None:
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default=os.path.join(ROOT, 'workdirs', 'stage2_bench', 'xattn_L50'))
  p.add_argument('--lengths', default='50,200,1000')
  p.add_argument('--runs', type=int, default=20, help='timed runs per append cell (median)')
  p.add_argument('--keep', type=int, default=0, help='policy keep (0 = max_len // 2)')
  p.add_argument('--policy_appends', type=int, default=100)
  p.add_argument('--users', type=int, default=1000)
  p.add_argument('--clients', default='1,8,32')
  p.add_argument('--asks_per_client', type=int, default=4)
  p.add_argument('--max_new_tokens', type=int, default=16)
  p.add_argument('--batch_wait_ms', type=float, default=5.0)
  p.add_argument('--parts', default='append,store,ask')
  p.add_argument('--note', default='', help='a sentence for the report (e.g. machine load)')
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'serving.md'))
  p.add_argument('--results', default=os.path.join(ROOT, 'workdirs', 'serving_bench',
                                                   'results.json'))
  p.add_argument('--report_only', action='store_true', help='rewrite --out from --results')
  import sys
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  if args.report_only:
    with open(args.results) as f:
      return write_report(json.load(f), args.out)
  parts = set(args.parts.split(','))
  clients = [int(c) for c in args.clients.split(',')]
  exp, params = generation.load_run(args.workdir)
  with tempfile.TemporaryDirectory() as tmp:
    engine = engine_lib.Engine(exp, params, store_lib.Store(os.path.join(tmp, 'users.sqlite')),
                               keep=args.keep or None, max_batch=max(clients),
                               max_prompt_tokens=1 << 17, max_new_tokens=args.max_new_tokens)
    results = {'command': shlex.join(['python', '-m', 'benchmarks.serving', *argv]),
               'machine': machine(), 'workdir': args.workdir, 'mode': exp.mode,
               'digest': engine.digest, 'note': args.note,
               'asks_per_client': args.asks_per_client, 'max_new_tokens': args.max_new_tokens,
               'batch_wait_ms': args.batch_wait_ms, 'append': [], 'ask': []}
    if 'append' in parts:
      results['append'] = append_costs(exp, params, [int(n) for n in args.lengths.split(',')],
                                       args.runs, args.keep or None, args.policy_appends)
    if parts & {'store', 'ask'}:  # Asks need the stored users.
      histories = _histories(exp, max(clients))
      results['store'] = store_costs(engine, histories, max(args.users, len(histories)))
    if 'ask' in parts:
      results['ask'] = ask_costs(engine, histories, clients, args.asks_per_client,
                                 args.max_new_tokens, args.batch_wait_ms)
    engine.store.close()
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results, 'w') as f:
    json.dump(results, f, indent=1)
  write_report(results, args.out)
  print(f'Wrote {args.out} and {args.results}')


if __name__ == '__main__':
  main()
