r"""Greedy decode speed of Gemma 3 270M on this machine, before and after `weight_einsum`.

  python -m benchmarks.decode_speed [--cache_dir DIR] [--runs 5] [--new_tokens 32]

Times `user_llm.decoding.sample` (the whole compiled token loop, greedy, no stop
token) after a `prefill` of short English prompts, at batch 1 and 8, for:
  gm-f32    `GemmaDecoder(gm_layers=True)`: gm's layers, the path before this work;
  gm-bf16   the same with the params cast to bfloat16 (config.llm.param_dtype='bfloat16');
  f32, bf16 the default path (`weight_einsum`: weights read in place; `cached_attention`:
            the KV cache updated in place);
  int8      `weight_einsum.quantize_int8` of the float32 params (W8A8, opt-in).
Variants run interleaved, one timed `sample` call each per round, so a load that comes
and goes hits them alike; the table gives the median over `--runs` rounds (wall and
this process's CPU time) and what `sample` compiled during the timed rounds (0: one
executable serves every call of a shape). Tokens/s is per sequence; weights GB/s is
the bytes of all params (each is read once per step) over the wall time of a step.
llama.cpp decodes the same model from its 4-bit GGUF at 52 tokens/s at batch 1 on 2
threads (`llama-bench -t 2 -p 0 -n 16`, measured on this machine earlier).

Quality of each variant against float32 on the default path: next-token agreement, KL
and perplexity over tests/testdata/english_passage.txt, teacher-forced through the
cached path (`decoding.extend` on an empty cache, so int8 runs its W8A8 kernels), and
whether the greedy tokens of the timed runs equal those of gm's layers in the same
dtype (float32 for int8).
It writes benchmarks/decode_speed.md.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import decode_anatomy
from benchmarks import efficiency
from benchmarks import efficiency_lib as lib
from user_llm import decoding
from user_llm.models import gemma as gemma_lib
from user_llm.models import weight_einsum as we

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSAGE = os.path.join(ROOT, 'tests', 'testdata', 'english_passage.txt')
LLAMA_CPP_TOKENS_PER_S = 52.0  # llama-bench -t 2 -p 0 -n 16, Q4_K_M GGUF, batch 1.
PROMPTS = ['The capital of France is', 'My favourite film of the nineties is',
           'A recipe for pancakes:', 'Once upon a time,', 'The best way to learn Python is',
           'Here is a short poem about the sea:', 'Three facts about cats:',
           'The history of the bicycle begins']
VARIANTS = ('gm-f32', 'gm-bf16', 'f32', 'bf16', 'int8')


def variants(config, params: dict, names) -> dict[str, tuple]:
  """name -> (decoder, params) of each benchmarked variant."""
  fast, gm_layers = gemma_lib.GemmaDecoder(config), gemma_lib.GemmaDecoder(config, gm_layers=True)
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  made = {'gm-f32': (gm_layers, params), 'gm-bf16': (gm_layers, bf16),
          'f32': (fast, params), 'bf16': (fast, bf16),
          'int8': (fast, we.quantize_int8(fast, params))}
  return {k: made[k] for k in names}


def reference(name: str) -> str:
  """The variant on gm's layers whose greedy tokens `name` is compared with."""
  return 'gm-bf16' if name.endswith('bf16') else 'gm-f32'



def prompts_batch(tok, batch: int) -> np.ndarray:
  return decoding.left_pad([[tok.special_tokens.BOS] + tok.encode(PROMPTS[i % len(PROMPTS)])
                            for i in range(batch)])


def time_decoding(runs_of: dict, new_tokens: int, rounds: int) -> dict:
  """key -> {wall, cpu: per-step seconds of each round; tokens; compiles}."""
  out = {}
  for key, (dec, params, ctx) in runs_of.items():  # Warm-up: compiles once per key.
    out[key] = dict(wall=[], cpu=[], tokens=np.asarray(
        decoding.sample(dec, params, ctx, max_new_tokens=new_tokens)))
  compiled = decoding.sample._cache_size()
  for _ in range(rounds):
    for key, (dec, params, ctx) in runs_of.items():
      wall, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(decoding.sample(dec, params, ctx, max_new_tokens=new_tokens))
      out[key]['wall'].append((time.perf_counter() - wall) / new_tokens)
      out[key]['cpu'].append((time.process_time() - cpu) / new_tokens)
  for key in out:
    out[key]['compiles'] = decoding.sample._cache_size() - compiled
  return out


def teacher_forced_logits(dec, params, tokens: jax.Array) -> jax.Array:
  """float32[L, V] logits of every position of tokens int[1, L] through the cached path."""
  cache = gemma_lib.init_cache(dec.config, 1, tokens.shape[1], gemma_lib.compute_dtype(params))
  res = decoding.extend(dec, params, cache, tokens, jnp.zeros(tokens.shape, bool),
                        jnp.full((1,), -1, jnp.int32), {})
  return res.logits[0].astype(jnp.float32)


def quality(made: dict, tok) -> dict[str, dict]:
  """Per variant: next-token agreement with f32, mean KL(f32 || variant), perplexity."""
  with open(PASSAGE) as f:
    ids = [tok.special_tokens.BOS] + tok.encode(f.read())
  tokens = jnp.asarray([ids], jnp.int32)
  fn = jax.jit(teacher_forced_logits, static_argnums=0)
  logp = {k: jax.nn.log_softmax(fn(dec, p, tokens)[:-1]) for k, (dec, p) in made.items()}
  ref = logp['f32']
  target = tokens[0, 1:, None]
  rows = {}
  for k, lp in logp.items():
    rows[k] = dict(
        agree=float(jnp.mean(jnp.argmax(lp, -1) == jnp.argmax(ref, -1))),
        kl=float(jnp.mean(jnp.sum(jnp.exp(ref) * (ref - lp), -1))),
        ppl=float(jnp.exp(-jnp.mean(jnp.take_along_axis(lp, target, -1)))),
        n=len(ids) - 1)
  return rows


def run(args) -> tuple[dict, dict, dict]:
  args.load = os.getloadavg()  # Before this process adds its own threads.
  config, params, tok = lib.load_gemma_270m(args.cache_dir)
  made = variants(config, params, args.variants)
  runs_of = {}
  for batch in args.batches:
    prompts = jnp.asarray(prompts_batch(tok, batch))
    for name, (dec, p) in made.items():
      runs_of[name, batch] = (dec, p, decoding.prefill(dec, p, prompts, None, args.new_tokens))
  timing = time_decoding(runs_of, args.new_tokens, args.runs)
  sizes = {name: decode_anatomy.nbytes(p) for name, (_, p) in made.items()}
  qual = quality({k: v for k, v in made.items() if k != 'gm-f32'}, tok) if 'f32' in made else {}
  return timing, sizes, qual


def report(timing: dict, sizes: dict, qual: dict, args) -> str:
  load = getattr(args, 'load', (0.0, 0.0, 0.0))
  lines = [
      '# Greedy decode speed of Gemma 3 270M (benchmarks/decode_speed.py)', '',
      f'Command: `python -m benchmarks.decode_speed --runs {args.runs} --new_tokens '
      f'{args.new_tokens}`. Machine: {efficiency.machine()}; load average before the run '
      f'{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min: above ~0.1 other '
      'processes shared the cores, and wall times are longer than on an idle machine). '
      f'`decoding.sample` of {args.new_tokens} tokens after a short prompt; per step: '
      f'median of {args.runs} rounds. llama.cpp: {LLAMA_CPP_TOKENS_PER_S:.0f} tokens/s '
      '(Q4_K_M GGUF, batch 1, 2 threads).', '',
      '| variant | batch | ms / step | CPU ms / step | tokens/s per sequence | tokens/s all '
      'sequences | x llama.cpp (batch 1) | weights MB | weights GB/s | greedy tokens = gm\'s '
      'layers, same dtype | compiles in timed runs |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for (name, batch), t in timing.items():
    wall, cpu = statistics.median(t['wall']), statistics.median(t['cpu'])
    ref = None if name.startswith('gm-') else timing.get((reference(name), batch))
    same = '' if ref is None else ('yes' if np.array_equal(t['tokens'], ref['tokens']) else
                                   f"{np.mean(t['tokens'] == ref['tokens']):.0%} of tokens")
    ratio = f'{1 / wall / LLAMA_CPP_TOKENS_PER_S:.2f}' if batch == 1 else ''
    lines.append(f'| {name} | {batch} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | {1 / wall:.1f} | '
                 f'{batch / wall:.1f} | {ratio} | {sizes[name] / 1e6:.0f} | '
                 f'{sizes[name] / wall / 1e9:.1f} | {same} | {t["compiles"]} |')
  if qual:
    n = next(iter(qual.values()))['n']
    lines += ['', f'Quality against float32, teacher-forced over the {n} tokens of '
              'tests/testdata/english_passage.txt through the cached (decode) path '
              '(gm-bf16: gm\'s layers on the same bfloat16 params):', '',
              '| variant | next token = f32 | mean KL(f32 || variant), nats | perplexity |',
              '|---|---|---|---|']
    for name, q in qual.items():
      lines.append(f"| {name} | {q['agree']:.1%} | {q['kl']:.4f} | {q['ppl']:.3f} |")
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = lib.gemma_parser(__doc__, 'decode_speed.md')
  p.add_argument('--runs', type=int, default=5)
  p.add_argument('--new_tokens', type=int, default=32)
  p.add_argument('--batches', type=lib.int_list, default=[1, 8])
  p.add_argument('--variants', type=lambda s: s.split(','), default=list(VARIANTS))
  args = p.parse_args(argv)
  lib.write_md(args.out, report(*run(args), args))


if __name__ == '__main__':
  main()
