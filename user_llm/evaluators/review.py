"""Stage 2: review generation, greedy decoding scored by ROUGE-Lsum F1 (`rouge-score`).

At most `config.data.max_answer_tokens` tokens are generated (KV cache, the user
memory computed once: `user_llm.decoding.generate`) and compared with the reference.
"""

import numpy as np

from user_llm import decoding
from user_llm.evaluators import common


def rouge_lsum(scorer, reference: str, generated: str) -> float:
  # rougeLsum splits summaries on newlines; a review is one "sentence" per line.
  return scorer.score(reference, generated)['rougeLsum'].fmeasure


class ReviewRouge:
  """ROUGE-Lsum F1 of greedy generations against the reference reviews."""

  task = 'review'

  def __init__(self, exp):
    """Args: exp: a set-up `UserLLMExperiment`."""
    self.exp = exp

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics 'review/rougeLsum' with CIs, per-example columns)."""
    from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
    exp, tok = self.exp, self.exp.tokenizer
    scorer = rouge_scorer.RougeScorer(['rougeLsum'])
    cols = common.Columns()
    for batch in common.eval_batches(exp, self.task):
      prompts, user = common.llm_inputs(exp, params, batch)
      out = decoding.generate(exp.model, params, prompts, user, stop_tokens=tok.stop_ids,
                              max_new_tokens=exp.config.data.max_answer_tokens)
      scores = []
      for r, gen in enumerate(decoding.trim(np.asarray(out), tok.stop_ids)):
        p = int(batch['prompt_len'][r])
        ref = [t for t in batch['tokens'][r, p:].tolist() if t not in (0, tok.eos_id)]
        scores.append(rouge_lsum(scorer, tok.decode(ref), tok.decode(gen)))
      cols.add(batch['example_mask'], user=batch['user'],
               rougeLsum=np.asarray(scores, np.float32))
    examples = cols.arrays()
    return common.summarise(examples, prefix=f'{self.task}/'), examples
