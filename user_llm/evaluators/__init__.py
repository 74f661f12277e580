"""One evaluator per task, used by training (`Experiment.evaluate`) and benchmarks.

As big_vision's `evaluators/`: each module owns one way of scoring a model and
returns per-example values; `common.summarise` turns them into the reported means
with 95% bootstrap CIs over users (`user_llm/stats.py`). Ranks and Recall@K come
from `user_llm/metrics.py` (one implementation, one tie rule: ties count against
the target).

  catalogue.CatalogueRanking   stage 1: the next item over the whole catalogue
                               (Recall@K, NDCG@K; 'all' and 'unseen' rankings)
  candidates.CandidateRanking  stage 2: next item / favourite genre by the LLM's
                               likelihood of each candidate answer (Recall@K)
  review.ReviewRouge           stage 2: generated review vs reference (ROUGE-Lsum)
"""
