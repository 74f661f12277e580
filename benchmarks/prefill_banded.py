r"""Banded vs dense sliding-window attention in a long prefill (real Gemma 3 270M).

  python -m benchmarks.prefill_banded [--lengths 1024,2048,4480] [--batch 4] [--runs 2]

A 200-event text prompt is ~4,450 Gemma tokens; 15 of Gemma 3 270M's 18 layers attend
to a 512-token window, yet a dense prefill computes every query against every cache
slot and masks. `decoding.prefill` runs those layers banded
(`cached_attention.contiguous_prompt`: query blocks of W read 2W slots). This script
times the same jitted prefill (weights in `--dtype`, last-position logits, the cache
of the candidates' length after it, as `score_candidates`) both ways on one batch of
left-padded prompts of random token ids, with each executable's XLA cost-analysis
GFLOP, the median wall time of `--runs` calls after a warm-up, and the largest
difference of their last logits. It writes benchmarks/prefill_banded.md.
"""

from __future__ import annotations

import contextlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import efficiency
from benchmarks import efficiency_lib as lib
from user_llm import decoding
from user_llm.models import cached_attention
from user_llm.models import gemma as gemma_lib

EXTRA = 24  # Free cache slots after the prompt: the next-item candidates' length.


@contextlib.contextmanager
def dense_prefill():
  """Traces `decoding.prefill` with banding off (the path before it existed)."""
  orig = cached_attention.contiguous_prompt
  cached_attention.contiguous_prompt = lambda enabled=True: orig(False)
  try:
    yield
  finally:
    cached_attention.contiguous_prompt = orig


def measure(decoder, params, prompts: np.ndarray, runs: int, banded: bool):
  """(median s, GFLOP, float32[B, V] last logits) of one compiled prefill."""
  def fn(p, x):
    return decoding.prefill.__wrapped__(decoder, p, x, None, EXTRA).logits
  with contextlib.nullcontext() if banded else dense_prefill():
    compiled = jax.jit(fn).lower(params, prompts).compile()
  times = lib.time_calls(lambda: compiled(params, prompts), runs, warmup=True)
  return statistics.median(times), lib.xla_flops(compiled) / 1e9, np.asarray(
      compiled(params, prompts), np.float32)


def run(args) -> list[tuple]:
  config, params, _ = lib.load_gemma_270m(args.cache_dir, args.dtype)
  decoder = gemma_lib.GemmaDecoder(config)
  rng = np.random.default_rng(0)
  rows = []
  for length in args.lengths:
    # Row r is `length - 37 r` tokens long (left-padded): the ragged batch an eval sees.
    prompts = np.zeros((args.batch, length), np.int32)
    for r in range(args.batch):
      n = length - 37 * r
      prompts[r, -n:] = rng.integers(3, config.num_embed, n)
      prompts[r, -n] = 2  # BOS
    prompts = jnp.asarray(prompts)
    dense = measure(decoder, params, prompts, args.runs, banded=False)
    band = measure(decoder, params, prompts, args.runs, banded=True)
    diff = float(np.abs(dense[2] - band[2]).max())
    scale = float(np.abs(dense[2]).max())
    rows.append((length, dense[:2], band[:2], diff, scale))
    print(rows[-1][:3], diff, flush=True)
  return rows


def report(rows, args) -> str:
  lines = [
      '# Long prefill: banded vs dense local attention (benchmarks/prefill_banded.py)', '',
      f'Command: `python -m benchmarks.prefill_banded --lengths '
      f'{",".join(map(str, args.lengths))} --batch {args.batch} --runs {args.runs}`. '
      f'Machine: {efficiency.machine()}. Gemma 3 270M '
      f'weights in {args.dtype}, batch {args.batch} of left-padded prompts, '
      f'{EXTRA} free cache slots after them, last-position logits; both executables in one '
      f'process, median of {args.runs} calls after a warm-up. "max |d logit|": the '
      'largest difference of the two last-position logits (scale: the largest |logit|).'
      + (f' {args.note}' if args.note else ''),
      '', '| prompt tokens | dense s | dense GFLOP | banded s | banded GFLOP | speed-up | '
      'dense GFLOP/s | banded GFLOP/s | max abs d logit (scale) |',
      '|---|---|---|---|---|---|---|---|---|']
  for length, (ds, dg), (bs, bg), diff, scale in rows:
    lines.append(f'| {length} | {ds:.2f} | {dg:.0f} | {bs:.2f} | {bg:.0f} | {ds / bs:.2f}x | '
                 f'{dg / ds:.0f} | {bg / bs:.0f} | {diff:.3g} ({scale:.3g}) |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = lib.gemma_parser(__doc__, 'prefill_banded.md')
  p.add_argument('--lengths', type=lib.int_list, default=[1024, 2048, 4480])
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--runs', type=int, default=2)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--note', default='', help='a sentence added to the report (e.g. load)')
  args = p.parse_args(argv)
  lib.write_md(args.out, report(run(args), args))


if __name__ == '__main__':
  main()
