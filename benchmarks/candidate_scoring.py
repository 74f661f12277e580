r"""Candidate scoring: what length ordering and packed unembedding save (real Gemma).

  python -m benchmarks.candidate_scoring [--workdir RUN] [--batches 8]

`decoding.score_candidates` ranks each test user's candidate answers (next item: the
true title + 19 catalogue titles; favourite genre: the 20 genre names) by their
log-likelihood after one shared prefill, `config.eval.candidate_chunk` candidates per
call. Two levers, each a flag of it: `by_length` scores a row's candidates shortest
first, so each chunk runs only as many positions as its own longest instead of the
longest of all (MovieLens titles: 12 Gemma tokens on average, 24 at most); `pack`
unembeds only the real answer tokens (Gemma 3 270M's 262k-way unembedding is about
two thirds of a token's FLOPs). This scores the first `--batches` test batches of
each task three ways in one process: neither lever (about the path before them, which
ran every chunk to the longest candidate of the batch), by_length only, both (the
default). Per way: the wall time of a second pass over the same
batches (the first compiles), the XLA GFLOP of its candidate calls (cost analysis
of each compiled shape, summed over calls; the prefill is the same for all three
and counted apart), and the largest score difference against the first way. The
model is a stage-2 run's (`--workdir`: its config and params) or, without one, the
default config's initial params (gates at 0: the same work, the same timing).
Writes benchmarks/candidate_scoring.md.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from user_llm import checkpointing
from user_llm import decoding
from user_llm import experiment
from user_llm import metrics
from user_llm import train
from user_llm.evaluators import candidates
from user_llm.evaluators import common

WAYS = {  # name -> score_candidates keywords
    'neither (every slot, given order)': dict(by_length=False, pack=False),
    'by_length': dict(by_length=True, pack=False),
    'by_length + pack (default)': dict(by_length=True, pack=True),
}


class FlopCounter:
  """Wraps `decoding._score_chunk`: XLA FLOPs of every call (one analysis per shape)."""

  def __init__(self):
    self.orig, self.flops, self.per_shape = decoding._score_chunk, 0.0, {}  # pylint: disable=protected-access

  def __call__(self, model, params, ctx, cands, rows, cols, *, pack=True):
    key = (cands.shape, rows.shape, pack)
    if key not in self.per_shape:
      compiled = self.orig.lower(model, params, ctx, cands, rows, cols, pack=pack).compile()
      self.per_shape[key] = train.step_flops(compiled)
    self.flops += self.per_shape[key]
    return self.orig(model, params, ctx, cands, rows, cols, pack=pack)

  def __enter__(self):
    decoding._score_chunk = self  # pylint: disable=protected-access
    return self

  def __exit__(self, *exc):
    decoding._score_chunk = self.orig  # pylint: disable=protected-access


def build(workdir: str, config_arg: str):
  """(experiment, inference params, what the model is)."""
  if workdir:
    exp = experiment.build(experiment.read_config(os.path.join(workdir, 'config.json')), None)
    return exp, exp.inference_params(checkpointing.load_params(workdir)), workdir
  from configs import movielens_userllm  # pylint: disable=g-import-not-at-top
  exp = experiment.build(movielens_userllm.get_config(config_arg), None)
  params = exp.init_params(jax.random.PRNGKey(0))
  return exp, exp.inference_params(params), (f'configs/movielens_userllm.py:{config_arg}, '
                                             'initial params')


def run(args) -> str:
  exp, params, what = build(args.workdir, args.config_arg)
  exp.config.eval.max_batches = args.batches
  chunk = exp.config.eval.candidate_chunk
  lines = ['# Candidate scoring: length ordering and packed unembedding', '',
           f'Command: `python -m benchmarks.candidate_scoring --batches {args.batches}'
           f'{" --workdir " + args.workdir if args.workdir else ""}'
           f'{" --config_arg " + args.config_arg if args.config_arg else ""}` ({jax.default_backend()}, '
           f'{jax.device_count()} device(s)). Model: {what}; Gemma 3 270M in '
           f'{exp.config.llm.param_dtype}; eval batch {exp.config.eval.batch_size}, '
           f'{chunk} candidates per call.', '',
           '| task | way | users | s (2nd pass) | candidate GFLOP | GFLOP/s | compiled shapes '
           '| max abs score diff vs first way | recall@1 | users whose recall@1 differs from the first way\'s |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for task in exp.config.eval.tasks:
    ranking = candidates.CandidateRanking(exp, task)
    rng = np.random.default_rng(exp.config.eval.seed)
    inputs = []  # The evaluator's own prompts, users and candidates, built once.
    for batch in common.eval_batches(exp, task):
      prompts, user = common.llm_inputs(exp, params, batch)
      cands, target = ranking.candidates(batch, rng)
      inputs.append((prompts, user, cands, target, batch['example_mask']))
    users = int(sum(k.sum() for *_, k in inputs))
    ref = None
    for name, kw in WAYS.items():
      def one_pass():
        return [decoding.score_candidates(exp.model, params, p, c, u, chunk=chunk, **kw)
                for p, u, c, _, _ in inputs]
      with FlopCounter() as counter:
        one_pass()  # Compiles every shape (and counts their FLOPs once).
      counter.flops = 0.0
      with FlopCounter() as counter:  # Once every shape is analysed it only adds FLOPs up.
        t = time.perf_counter()
        scores = one_pass()
        secs = time.perf_counter() - t
      keep = np.concatenate([k for *_, k in inputs])
      s = np.concatenate(scores)[keep]
      tgt = np.concatenate([t_ for *_, t_, _ in inputs])[keep]
      # The evaluator's metric (ties count against the target): two candidates with the
      # same tokens (titles shared by two movies) tie up to float rounding, which
      # depends on the chunk they were scored in.
      hit = metrics.recall_at(s, tgt, (1,))['recall@1']
      if ref is None:
        ref = (s, hit)
      gflop = counter.flops / 1e9
      lines.append(f'| {task} | {name} | {users} | {secs:.1f} | {gflop:.0f} | {gflop / secs:.0f} | '
                   f'{len(counter.per_shape)} | {np.abs(s - ref[0]).max():.2e} | '
                   f'{hit.mean():.3f} | {int((hit != ref[1]).sum())} |')
      print(lines[-1], flush=True)
  lines += ['', 'GFLOP: the candidate calls only (`decoding._score_chunk`); each task\'s '
            'prefill is the same for the three ways and excluded from the column, not from '
            'the seconds.']
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='', help='A stage-2 run (default: initial params).')
  p.add_argument('--config_arg', default='', help='Without --workdir: the config arg '
                 '(e.g. encoder=workdirs/stage1/standard/ar_early_future_s0).')
  p.add_argument('--batches', type=int, default=8, help='Test batches per task.')
  p.add_argument('--out', default='benchmarks/candidate_scoring.md')
  args = p.parse_args(argv)
  text = run(args)
  with open(args.out, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
