r"""Where the time of a short Gemma 3 270M call goes on this machine (measured).

  python -m benchmarks.decode_anatomy [--cache_dir DIR] [--runs 7]

benchmarks/efficiency.md finds that a 10-token User-LLM prefill takes as long as a
1-token decode step, so the wall-clock ratio text / User-LLM is far below the FLOPs
ratio. This script measures why, on the real weights (float32, as the efficiency
benchmark): the time of one decode step (batch 1, 1 token, KV cache of 32 slots) of the
decoder cut to its first N layers without the unembedding (with 1 layer, its 22 MB of
weights stay in the CPU caches between calls; with 18, 401 MB cannot), and the whole
step with it; the 262k x 640 unembedding alone; and a plain read of the embedding table (a memory
bandwidth reference). Each is a compiled executable, median of `--runs` after a warm-up.
It writes benchmarks/decode_anatomy.md.
"""

from __future__ import annotations

import dataclasses
import statistics

import jax
import jax.numpy as jnp

from benchmarks import efficiency_lib as lib
from benchmarks import efficiency
from user_llm.models import gemma as gemma_lib
from user_llm.models import weight_einsum as we
CACHE_SLOTS = 32


def timed(fn, *args, runs: int) -> tuple[float, float]:
  """(median ms over `runs` calls after a warm-up, XLA cost-analysis GFLOP) of jit(fn)."""
  compiled = jax.jit(fn).lower(*args).compile()
  times = lib.time_calls(lambda: compiled(*args), runs, warmup=True)
  return statistics.median(times) * 1e3, lib.xla_flops(compiled) / 1e9


def nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def truncated(config, params, n: int):
  """(decoder of the first n layers, its params): same weights, fewer blocks."""
  cfg = dataclasses.replace(config, attention_types=config.attention_types[:n])
  keep = {k: v for k, v in params.items() if not k.startswith('layer_') or int(k[6:]) < n}
  return gemma_lib.GemmaDecoder(cfg), cfg, keep


def decode_step(decoder, logits: bool):
  """One token (batch 1) against a KV cache; returns the logits or the final hidden."""
  tokens = jnp.ones((1, 1), jnp.int32)
  positions = jnp.zeros((1, 1), jnp.int32)
  mask = jnp.ones((1, 1, CACHE_SLOTS), bool)

  def step(params, cache):
    out = decoder.apply({'params': params}, tokens, positions=positions, attention_mask=mask,
                        cache=cache, last_only=True)
    return out.logits if logits else out.hidden
  return step


def run(args) -> list[tuple]:
  config, params, _ = lib.load_gemma_270m(args.cache_dir)
  table = params['embedder']['input_embedding']
  rows = []  # (what, ms, GFLOP, weight MB read per call)
  for n in args.layers:
    decoder, cfg, p = truncated(config, params, n)
    cache = gemma_lib.init_cache(cfg, 1, CACHE_SLOTS)
    ms, gf = timed(decode_step(decoder, logits=False), p, cache, runs=args.runs)
    rows.append((f'decode step, first {n} layers, no unembedding', ms, gf,
                 nbytes({k: v for k, v in p.items() if k != 'embedder'}) / 1e6))
  decoder = gemma_lib.GemmaDecoder(config)
  cache = gemma_lib.init_cache(config, 1, CACHE_SLOTS)
  ms, gf = timed(decode_step(decoder, logits=True), params, cache, runs=args.runs)
  rows.append(('decode step, all 18 layers + unembedding', ms, gf, nbytes(params) / 1e6))
  vec = jnp.ones((1, config.embed_dim), jnp.float32)
  ms, gf = timed(lambda e, v: jnp.dot(v, e.T), table, vec, runs=args.runs)
  rows.append(('unembedding alone, jnp.dot(x, E.T) as gm.nn.Embedder.decode', ms, gf,
               nbytes(table) / 1e6))
  ms, gf = timed(lambda e, v: we.weight_einsum('...D,VD->...V', v, e), table, vec, runs=args.runs)
  rows.append(('unembedding alone, weight_einsum as GemmaDecoder.unembed', ms, gf,
               nbytes(table) / 1e6))
  ms, gf = timed(lambda e: e.sum(), table, runs=args.runs)
  rows.append(('read the 262k x 640 table once (sum): bandwidth reference', ms, gf,
               nbytes(table) / 1e6))
  return rows


def report(rows, args) -> str:
  lines = [
      '# Anatomy of a short Gemma 3 270M call (benchmarks/decode_anatomy.py)', '',
      f'Command: `python -m benchmarks.decode_anatomy --runs {args.runs}`. Machine: '
      f'{efficiency.machine()}. Float32 weights, batch 1, 1 token, KV cache of '
      f'{CACHE_SLOTS} slots; median of {args.runs} runs after a warm-up. The decoder runs '
      'its default path with a cache (`weight_einsum`, `cached_attention`); '
      'benchmarks/decode_speed.md compares it with gm\'s layers, whose steps copied '
      'most weights (transposed) before reading them.', '',
      '| call | ms | GFLOP | weights read, MB | GB/s (weights / time) | GFLOP/s |',
      '|---|---|---|---|---|---|']
  for what, ms, gf, mb in rows:
    lines.append(f'| {what} | {ms:.1f} | {gf:.3f} | {mb:.0f} | {mb / ms:.1f} | '
                 f'{gf / ms * 1e3:.1f} |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = lib.gemma_parser(__doc__, 'decode_anatomy.md')
  p.add_argument('--runs', type=int, default=7)
  p.add_argument('--layers', type=lib.int_list, default=[1, 2, 6, 18])
  args = p.parse_args(argv)
  lib.write_md(args.out, report(run(args), args))


if __name__ == '__main__':
  main()
