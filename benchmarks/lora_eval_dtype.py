r"""LoRA adapters at evaluation: float32 vs cast to the decoder's dtype, same scores?

  python -m benchmarks.lora_eval_dtype [--workdir workdirs/stage2_bench/text_prompt_lora_L200]
      [--batches 2]

`config.eval.lora_in_param_dtype` (default True) casts a LoRA run's float32 adapters to
the frozen Gemma's dtype before evaluation (`UserLLMExperiment.inference_params`), so a
bf16 decoder is not promoted to float32. This scores the first `--batches` next-item
test batches of a trained LoRA run both ways with `decoding.score_candidates` (the
evaluator's own candidates) and prints, per batch: the wall time of each (compilation
included), the largest log-likelihood difference, the true item's rank among the
candidates each way and whether the top candidate agrees.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from user_llm import checkpointing
from user_llm import decoding
from user_llm import experiment
from user_llm.evaluators import candidates
from user_llm.evaluators import common


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='workdirs/stage2_bench/text_prompt_lora_L200')
  p.add_argument('--batches', type=int, default=2)
  args = p.parse_args(argv)
  cfg = experiment.read_config(f'{args.workdir}/config.json')
  cfg.eval.max_batches = args.batches
  exp = experiment.build(cfg, None)
  params = checkpointing.load_params(args.workdir)
  ranking = candidates.CandidateRanking(exp, 'next_item')
  rng = np.random.default_rng(cfg.eval.seed)
  for batch in common.eval_batches(exp, 'next_item'):
    cands, target = ranking.candidates(batch, rng)
    scores = {}
    for cast in (True, False):
      exp.config.eval.lora_in_param_dtype = cast
      p_eval = exp.inference_params(params)
      prompts, user = common.llm_inputs(exp, p_eval, batch)
      t = time.time()
      scores[cast] = decoding.score_candidates(exp.model, p_eval, prompts, cands, user,
                                               chunk=cfg.eval.candidate_chunk)
      print(f'{"cast" if cast else "float32"} adapters: prompts {prompts.shape}, '
            f'{time.time() - t:.1f} s', flush=True)
    keep = batch['example_mask']
    a, b, tgt = scores[True][keep], scores[False][keep], target[keep]
    rank = lambda s: (s > s[np.arange(len(s)), tgt][:, None]).sum(1).tolist()
    print(f'max |d log p| {np.abs(a - b).max():.3f} (mean |log p| {np.abs(b).mean():.1f}); '
          f'true item rank cast {rank(a)}, float32 {rank(b)}; same top candidate '
          f'{(a.argmax(1) == b.argmax(1)).tolist()}', flush=True)


if __name__ == '__main__':
  main()
