"""Measurement functions of the efficiency benchmark (see benchmarks/efficiency.py).

Every cost is one jitted function, compiled ahead of time (`jit(f).lower(...).compile()`);
FLOPs and memory come from that executable's XLA cost and memory analyses, and the
same executable is timed, so what is counted is what runs.

Functions per method and history length (U events):
  user_side:    features -> `user_llm.user_inputs` (encoder, projection, Perceiver,
                cross-attention memory K/V); none for the text prompt.
  prefill:      `user_llm.decoding.prefill`: prompt [+ soft-prompt prefix] into a
                fresh `gm` KV cache sized for prompt + T new tokens, last logits.
  decode_step:  one token against that cache (`decoding.extend`, the step of
                `decoding.sample`; cache donated, as in a real loop).
  cached_query: a repeat query of a user whose context is already cached: the
                question tokens against a KV cache that holds the context (text
                history or soft prompt + BOS); for cross-attention the per-user
                `memory_kv` is the cache, so this is `prefill` without `user_side`.

Letters: B batch, U events, L prompt tokens, P prefix length, C cached length,
S cache length, T new tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from user_llm import decoding
from user_llm import train
from user_llm.models import gemma as gemma_lib
from user_llm.models import user_llm as ul

GIB = 1 << 30


@dataclasses.dataclass
class Cost:
  """Compile-time cost of one function and, if run, its wall-clock."""

  flops: float  # XLA cost analysis, whole call.
  peak_bytes: int  # memory_analysis: arguments + outputs + temporaries - aliased.
  seconds: float | None = None  # median wall-clock of one call (None: not run).
  runs: int = 0  # timed runs behind the median.
  note: str = ''  # why not run, when not run.


xla_flops = train.step_flops  # FLOPs of a compiled executable (XLA cost analysis).


def _peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


@dataclasses.dataclass
class Timer:
  """Decides how many runs a call gets, from its FLOPs and the rate seen so far.

  Attributes:
    runs: timed runs after one warm-up (the median is reported).
    cell_budget_s: a cell whose runs would take longer gets fewer (at least 1).
    max_call_s: calls estimated slower than this are not run at all.
    max_bytes: calls needing more memory than this are not run at all.
    enabled: False compiles and counts only.
  """

  runs: int = 5
  cell_budget_s: float = 90.0
  max_call_s: float = 200.0
  max_bytes: int = 16 * GIB
  enabled: bool = True
  rate: float = 30e9  # FLOP/s; raised to the best rate measured on large calls.

  def plan(self, cost: Cost) -> tuple[int, bool]:
    """(runs, warm-up?) for a call, or (0, _) with cost.note set."""
    if not self.enabled:
      cost.note = 'timing off'
      return 0, False
    if cost.peak_bytes > self.max_bytes:
      cost.note = f'needs {cost.peak_bytes / GIB:.0f} GiB'
      return 0, False
    est = cost.flops / self.rate
    if est > self.max_call_s:
      cost.note = f'est. {est:.0f} s/call'
      return 0, False
    runs = int(max(1, min(self.runs, self.cell_budget_s // max(est, 1e-9) - 1)))
    return runs, est * (runs + 1) <= self.cell_budget_s

  def learn(self, flops: float, seconds: float) -> None:
    if flops > 1e11 and seconds > 0:
      self.rate = max(self.rate, flops / seconds)


_COMPILED: dict = {}  # (key, argument shapes) -> executable: equal shapes compile once.
_TIMED: dict = {}  # (key, executable id) -> timed Cost of a chained (decode) call.


def compile_fn(fn: Callable, args: tuple, donate: tuple[int, ...] = (), key=None):
  """(executable, Cost without timing); memoised on `key` and the argument shapes."""
  shapes = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), args)
  memo = None if key is None else (key, donate, str(jax.tree.structure(args)),
                                   tuple(jax.tree.leaves(shapes)))
  compiled = _COMPILED.get(memo) if memo else None
  if compiled is None:
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    if memo:
      _COMPILED[memo] = compiled
  return compiled, Cost(xla_flops(compiled), _peak_bytes(compiled))


def time_calls(call: Callable[[], Any], runs: int, warmup: bool) -> list[float]:
  """Seconds of `runs` calls of `call` (results blocked on), after an optional warm-up."""
  if warmup:
    jax.block_until_ready(call())
  out = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(call())
    out.append(time.perf_counter() - t)
  return out


def measure(fn: Callable, args: tuple, timer: Timer, make_args: Callable | None = None,
            donate: tuple[int, ...] = (), repeat: int = 1, keep: list | None = None,
            key=None) -> Cost:
  """Compiles `fn(*args)`, counts it and times it per `timer`.

  Args:
    fn: the function (closed over static model parts).
    args: its arguments (arrays/pytrees).
    timer: the run policy.
    make_args: fresh arguments per call (needed when some are donated).
    donate: donated argument indices.
    repeat: calls per timed run chained through `fn`'s second output and the second
      argument (decode: feed the new cache back); the cost reported is per call.
    keep: if given, the executable is appended to it (reused by the caller).
    key: memo key of `fn` (with the shapes of `args`) to reuse its executable.
  """
  compiled, cost = compile_fn(fn, args, donate, key)
  if keep is not None:
    keep.append(compiled)
  memo = (key, id(compiled))
  if repeat > 1 and memo in _TIMED:  # Same decode executable: timed once (CPU time is scarce).
    return dataclasses.replace(_TIMED[memo], note='same executable, timed once')
  runs, warm = timer.plan(cost)
  if not runs:
    return cost
  make_args = make_args or (lambda: args)

  def call():
    a = make_args()
    jax.block_until_ready(a)
    t = time.perf_counter()
    for _ in range(repeat):
      out = compiled(*a)
      if repeat > 1:
        a = (a[0], out[1]) + tuple(a[2:])
    jax.block_until_ready(out)
    return time.perf_counter() - t

  if warm:
    call()
  times = [call() / repeat for _ in range(runs)]
  cost.seconds, cost.runs = statistics.median(times), runs
  timer.learn(cost.flops, cost.seconds)
  if repeat > 1 and key is not None:
    _TIMED[memo] = dataclasses.replace(cost)
  return cost


# ---------------------------------------------------------------- model functions


def user_side_fn(model: ul.UserLLM) -> Callable:
  return lambda params, feats, mask: ul.user_inputs(model, params, feats, mask)


def prefill_fn(model: ul.UserLLM, max_new_tokens: int) -> Callable:
  """(params, tokens, user_kw) -> (logits, cache, slot mask [B, S], last position)."""
  def prefill(params, tokens, user_kw):
    ctx = decoding.prefill(model, params, tokens, user_kw, max_new_tokens)
    return ctx.logits, ctx.cache, ctx.slot_mask(), ctx.last_pos
  return prefill


def decode_step_fn(model: ul.UserLLM) -> Callable:
  """(params, cache, step_inputs, user_kw) -> (logits, cache); one greedy step.

  step_inputs = (token int[B], slot mask bool[B, S] of the filled slots, last
  position int[B]); the token goes to the cache's `end_index` slot.
  """
  def step(params, cache, step_inputs, user_kw):
    token, slot_mask, pos = step_inputs
    out = decoding.extend(model, params, cache, token[:, None], slot_mask, pos,
                          decoding.memory_inputs(user_kw), last_only=True)
    return out.logits, out.cache
  return step


def cached_query_fn(model: ul.UserLLM) -> Callable:
  """(params, query, cache, user_kw) -> logits: query tokens after C cached slots.

  The cache (length S >= C + L) holds the user's context in slots [0, C) and its
  `end_index` is C; the query attends to those slots and causally to itself.
  """
  def query(params, tokens, cache, user_kw):
    batch = tokens.shape[0]
    c = cache['layer_0']['end_index'][0]
    size = cache['layer_0']['k'].shape[1]
    slot_mask = jnp.broadcast_to(jnp.arange(size)[None] < c, (batch, size))
    last_pos = jnp.full((batch,), c - 1, jnp.int32)
    return decoding.extend(model, params, cache, tokens, slot_mask, last_pos,
                           decoding.memory_inputs(user_kw), last_only=True).logits
  return query


def filled_cache(config, batch: int, cached_len: int, size: int):
  """A KV cache of `size` slots whose first `cached_len` are taken (cost does not
  depend on the K/V values; in use they come from the user's earlier prefill)."""
  cache = gemma_lib.init_cache(config, batch, size)
  return {name: dict(layer, end_index=jnp.full_like(layer['end_index'], cached_len))
          for name, layer in cache.items()}


# ---------------------------------------------------------------- one cell


def tile(tree, batch: int):
  """Repeats every array's leading (batch-1) axis `batch` times."""
  return jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), batch, axis=0), tree)


def measure_cell(model: ul.UserLLM, params, feats, mask, prompt: np.ndarray,
                 query: np.ndarray, cached_len: int, *, batch: int, timer: Timer,
                 max_new_tokens: int = 16) -> dict[str, Cost]:
  """All costs of one (method, history length, batch) cell.

  Args:
    model: the UserLLM ('text_prompt' mode for the baseline).
    params: its params (decoder = the Gemma params).
    feats, mask: the user's history, int[1, U] per feature and bool[1, U].
    prompt: int[L] the whole LLM prompt (BOS first; text mode: history included).
    query: int[Lq] the question tokens of a repeat query (no BOS).
    cached_len: C, what a repeat query finds in the KV cache: text mode the
      history prompt (BOS..history), soft prompt P + 1 (prefix + BOS), else 0.
    batch: B, the user is repeated B times.
    timer: the run policy.
    max_new_tokens: T, the decode budget the cache is sized for.

  Returns:
    {'user_side', 'prefill', 'decode_step', 'cached_query'} -> Cost (no
    'user_side' for the text prompt).
  """
  out: dict[str, Cost] = {}
  feats, mask = tile(feats, batch), tile(mask, batch)
  tokens = tile(jnp.asarray(prompt, jnp.int32)[None], batch)
  user_kw: dict = {}
  if model.mode != 'text_prompt':
    keep: list = []
    out['user_side'] = measure(user_side_fn(model), (params, feats, mask), timer, keep=keep,
                                key=(model, 'user_side'))
    user_kw = keep[0](params, feats, mask)
  keep = []
  out['prefill'] = measure(prefill_fn(model, max_new_tokens), (params, tokens, user_kw), timer,
                           keep=keep, key=(model, 'prefill', max_new_tokens))

  # Decode: the cache after the real prefill when it fits, else its shape only.
  size = tokens.shape[1] + (user_kw['prefix'].shape[1] if 'prefix' in user_kw else 0)
  slot = size
  size += max_new_tokens
  if out['prefill'].seconds is not None:
    _, cache, slot_mask, last_pos = keep[0](params, tokens, user_kw)
  else:
    cache = filled_cache(model.decoder_config, batch, slot, size)
    slot_mask = jnp.arange(size)[None].repeat(batch, 0) < slot
    last_pos = jnp.full((batch,), slot - 1, jnp.int32)
  step_in = (jnp.ones((batch,), jnp.int32), slot_mask, last_pos)
  copy = lambda: (params, jax.tree.map(jnp.copy, cache), step_in, user_kw)
  out['decode_step'] = measure(decode_step_fn(model), copy(), timer, make_args=copy,
                               donate=(1,), repeat=max_new_tokens,
                               key=(model, 'decode_step'))
  del cache

  if model.mode == 'cross_attention':
    out['cached_query'] = dataclasses.replace(out['prefill'])
  else:
    q = tile(jnp.asarray(query, jnp.int32)[None], batch)
    qcache = filled_cache(model.decoder_config, batch, cached_len,
                          cached_len + q.shape[1] + max_new_tokens)
    out['cached_query'] = measure(cached_query_fn(model), (params, q, qcache, user_kw), timer,
                                  key=(model, 'cached_query'))
  return out


# ------------------------------------------------- shared by the Gemma micro-benchmarks


def int_list(text: str) -> list[int]:
  """'1,8' -> [1, 8] (an argparse type)."""
  return [int(x) for x in text.split(',')]


def gemma_parser(doc: str, out_md: str) -> argparse.ArgumentParser:
  """A parser with `--cache_dir` (the converted Gemma) and `--out` (benchmarks/`out_md`)."""
  from user_llm import gemma_loader  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=doc.split('\n')[0])
  p.add_argument('--cache_dir', default=gemma_loader.DEFAULT_CACHE_DIR,
                 help='converted Gemma (launch/convert_gemma.py)')
  p.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), out_md))
  return p


def load_gemma_270m(cache_dir: str, dtype: str = 'float32'):
  """(decoder config, params, tokenizer) of the real Gemma 3 270M in `dtype`."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from user_llm import gemma_loader  # pylint: disable=g-import-not-at-top
  return gemma_loader.load_gemma(ml_collections.ConfigDict(dict(
      model='Gemma3_270M', checkpoint='', tokenizer='', cache_dir=cache_dir,
      param_dtype=dtype)))


def write_md(path: str, text: str) -> None:
  """Writes a benchmark's markdown report and prints it."""
  with open(path, 'w') as f:
    f.write(text)
  print(text)
