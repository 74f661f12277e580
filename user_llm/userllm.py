"""Stage 2 experiment: User-LLM on a pretrained Gemma (and the text-prompt baseline).

`config.userllm.mode` picks how the user reaches Gemma ('cross_attention',
'soft_prompt', or the 'text_prompt' baseline, which puts the serialised history in
the prompt); `config.userllm.num_latents` > 0 adds the Perceiver; the strategy
(`config.userllm.strategy`: full | lora | enc | proj) sets LoRA and the freeze rules.

Init (`load_pretrained`, only when a run starts from scratch): `decoder/` from the
Gemma checkpoint of `config.llm` (converted GGUF or official Orbax), `user_encoder/`
from the stage-1 workdir `config.userllm.encoder_workdir` unless
`config.userllm.random_encoder`.

Training: next-token cross-entropy on the answer tokens (+ EOS) of the task examples
(`config.tasks`, mixed evenly). Evaluation on the test windows, by exact likelihood of
candidate answers (see user_llm/ranking.py): favourite genre Recall@1 over all genre
names; next item Recall@1/5/10 over the true next item and
`config.eval.num_candidates - 1` catalogue items drawn uniformly without replacement
(fixed per example), a sampled-candidates protocol because scoring all 9.7k MovieLens
titles per user is out of reach on CPU (`num_candidates=0` ranks the full catalogue).
Review generation: greedy decoding (KV cache, user memory computed once) of at most
`max_answer_tokens`, ROUGE-Lsum F1 against the reference (`rouge-score`).
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging
from flax.core import FrozenDict
import grain
import jax
import jax.numpy as jnp
import numpy as np

from user_llm import checkpointing
from user_llm import gemma_loader
from user_llm import ranking
from user_llm import sampling
from user_llm import stats
from user_llm import train
from user_llm.models import gemma as gemma_lib
from user_llm.models import testing
from user_llm.models import user_encoder as ue
from user_llm.models import user_llm as ul

# strategy -> param-path regexes frozen (projection, Perceiver and cross-attention
# always train). LoRA also wraps the decoder in gm.nn.LoRA (config.userllm.lora_rank).
STRATEGY_FREEZE = {
    'full': [],
    'lora': [r'decoder/(?!.*lora/).*'],
    'enc': [r'decoder/.*'],
    'proj': [r'decoder/.*', r'user_encoder/.*'],
}


def freeze_rules(config) -> list[str]:
  s = config.userllm.strategy
  if s not in STRATEGY_FREEZE:
    raise ValueError(f'Unknown config.userllm.strategy {s!r}; expected {sorted(STRATEGY_FREEZE)}')
  # Idempotent: building the experiment twice must not stack the rules.
  return list(dict.fromkeys(STRATEGY_FREEZE[s] + list(config.train.freeze)))


def decoder_config(llm_cfg):
  if llm_cfg.model == 'tiny':  # Tests: a Gemma-3-structured toy (random weights).
    return testing.tiny_gemma_config(vocab=llm_cfg.tiny_vocab)
  return gemma_lib.gemma_config(llm_cfg.model)


def xattn_layers(uc, num_layers: int) -> tuple[int, ...]:
  """config.userllm.xattn_layers (a list) or every `xattn_every`-th layer from 0."""
  if uc.xattn_layers:
    return tuple(int(i) for i in uc.xattn_layers)
  return tuple(range(0, num_layers, uc.xattn_every))


def gate_values(params) -> dict[str, jax.Array]:
  """tanh of every cross-attention gate, named `gate/layer_{i}/{attn,ffw}` (logged to
  TensorBoard with the training metrics: 0 = that block does not reach Gemma)."""
  out = {}
  for layer, p in sorted(params.get('cross_attention', {}).items()):
    for g in ('attn', 'ffw'):
      if f'{g}_gate' in p:
        out[f'gate/{layer}/{g}'] = jnp.tanh(p[f'{g}_gate'].astype(jnp.float32))
  return out


class UserLLMExperiment(train.Experiment):
  """Stage 2 (see module docstring)."""

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    import data_pipelines  # pylint: disable=g-import-not-at-top
    from data_pipelines import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top

    uc = config.userllm
    self.mode = uc.mode
    self.prepared = data_pipelines.prepare(config.data)
    self.features = tuple(config.data.features)
    if config.llm.model == 'tiny':
      self.tokenizer = tok_lib.ByteTokenizer()
    else:
      self._params_dir, tok_path = gemma_loader.resolve_paths(config.llm)
      self.tokenizer = tok_lib.GemmaTokenizer(str(tok_path))
    self.decoder_config = decoder_config(config.llm)
    enc = None
    if self.mode != 'text_prompt':
      ec = config.encoder
      enc = ue.UserEncoder(
          FrozenDict({f: self.prepared.vocabs[f].size for f in self.features}),
          FrozenDict({f: ec.embed_dims[f] for f in self.features}),
          d_model=ec.d_model, num_layers=ec.num_layers, num_heads=ec.num_heads,
          mlp_dim=ec.mlp_dim, max_len=config.data.seq_len, fusion=ec.fusion,
          causal=True, dropout=0.0)
    self.model = ul.UserLLM(
        self.decoder_config, enc, mode=self.mode,
        xattn_layers=xattn_layers(uc, self.decoder_config.num_layers),
        num_latents=uc.num_latents, perceiver_depth=uc.perceiver_depth,
        lora_rank=uc.lora_rank if uc.strategy == 'lora' else 0)
    config.train.freeze = freeze_rules(config)  # Read by the trainer's optimizer.
    self.length = config.data.max_prompt_tokens + config.data.max_answer_tokens

  # ---------------------------------------------------------------- params
  def _dummy(self, b=1):
    u = self.config.data.seq_len
    feats = {f: jnp.full((b, u), 2, jnp.int32) for f in self.features}
    return feats, jnp.ones((b, u), bool), jnp.full((b, self.length), 2, jnp.int32)

  def init_params(self, rng):
    dtype = jnp.dtype(self.config.llm.param_dtype)
    if self.config.llm.model == 'tiny':  # No checkpoint: a random decoder.
      params = self.model.init(rng, *self._dummy(), method='init_all')['params']
      params['decoder'] = jax.tree_util.tree_map_with_path(
          lambda p, x: x if 'lora' in jax.tree_util.keystr(p) else x.astype(dtype),
          params['decoder'])
      return params
    # The pretrained decoder is filled by `load_pretrained` (or a restore), so it is
    # never randomly initialised: drawing a random 262k x D embedding in float32 was
    # the peak of host memory. Init the new parts with an 8-token vocabulary instead
    # (nothing outside the embedder depends on it), and give the Gemma weights zeros
    # in config.llm.param_dtype (bf16 keeps a frozen decoder small).
    small = self.model.clone(
        decoder_config=dataclasses.replace(self.decoder_config, num_embed=8))
    params = small.init(rng, *self._dummy(), method='init_all')['params']
    shapes = jax.eval_shape(
        lambda r: self.model.init(r, *self._dummy(), method='init_all')['params'], rng)
    lora = {jax.tree_util.keystr(p): x
            for p, x in jax.tree_util.tree_flatten_with_path(params['decoder'])[0]
            if 'lora' in jax.tree_util.keystr(p)}
    params['decoder'] = jax.tree_util.tree_map_with_path(
        lambda p, s: lora.get(jax.tree_util.keystr(p), None) if 'lora' in jax.tree_util.keystr(p)
        else jnp.zeros(s.shape, dtype), shapes['decoder'])
    return params

  def load_pretrained(self, params):
    init, params = params, dict(params)
    if self.config.llm.model != 'tiny':
      gemma = gemma_loader.load_params(self._params_dir, self.decoder_config,
                                       self.config.llm.param_dtype)
      params['decoder'] = _merge(params['decoder'], gemma, 'decoder')
    uc = self.config.userllm
    if self.mode != 'text_prompt' and not uc.random_encoder:
      if not uc.encoder_workdir:
        raise ValueError('config.userllm.encoder_workdir is empty: give a stage-1 workdir, '
                         'or set config.userllm.random_encoder=True for the ablation.')
      enc = checkpointing.load_params(uc.encoder_workdir, subtree='user_encoder')
      bad = gemma_loader.first_mismatch(params['user_encoder'], enc)
      if bad:
        raise ValueError(
            f'Stage-1 encoder in {uc.encoder_workdir} does not match config.encoder: first '
            f'mismatch at user_encoder/{bad}. Use the config.encoder of that stage-1 run.')
      params['user_encoder'] = enc
    # Loaded arrays take the dtype and sharding the trainer gave the fresh params.
    return jax.tree.map(lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding),
                        params, init)

  # ---------------------------------------------------------------- training
  def loss_fn(self, params, batch, rng):
    del rng
    # Targets at (answer_row, answer_pos) (answer + EOS tokens, [B, A]; the row
    # defaults to the own row, data_pipelines.trim_batch packs them densely), each
    # predicted from the position before it. Logits are computed only there: the
    # 262k-way unembedding is the costliest part of the step.
    tokens, pos = batch['tokens'], batch['answer_pos']
    rows = batch.get('answer_row')
    if rows is None:
      rows = jnp.broadcast_to(jnp.arange(pos.shape[0])[:, None], pos.shape)
    feats = {f: batch[f] for f in self.features}
    out = self.model.apply({'params': params}, feats, batch['mask'], tokens,
                           tokens != 0, pos - 1, rows, method='forward')
    targets = tokens[rows, pos]
    w = (batch['answer_mask'] & batch['example_mask'][rows]).astype(jnp.float32)
    # log p(target) = logit - logsumexp: no [B, A, V] log-softmax and no argmax
    # (an argmax over 262k logits cost a quarter of the step on XLA:CPU).
    logits = out.logits.astype(jnp.float32)
    tgt_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - tgt_logit
    loss = jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)
    top = jax.lax.stop_gradient(tgt_logit >= jnp.max(logits, axis=-1))
    acc = jnp.sum(top * w) / jnp.maximum(jnp.sum(w), 1.0)
    return loss, {'token_accuracy': acc, **gate_values(params)}

  def _dataset(self, split, task, batch_size, seed, **kw):
    import data_pipelines  # pylint: disable=g-import-not-at-top
    # trim_multiple is read now, not at prepare() time: a changed config applies.
    kw = {'text_prompt': self.mode == 'text_prompt',
          'trim_multiple': self.config.data.get('trim_multiple', 0), **kw}
    return data_pipelines.make_dataset(
        self.prepared, split, task, batch_size=batch_size, seed=seed, tokenizer=self.tokenizer,
        process_index=jax.process_index(), process_count=jax.process_count(), **kw)

  def train_dataset(self, seed):
    tasks = list(self.config.tasks)
    ds = [self._dataset('train', t, self.config.train.batch_size, seed + i)
          for i, t in enumerate(tasks)]
    mixed = ds[0] if len(ds) == 1 else grain.IterDataset.mix(ds, [1.0] * len(ds))
    return iter(mixed)

  # ---------------------------------------------------------------- evaluation
  def _candidates(self, task, batch, rng):
    """(int32[B, C, A] candidate answers, int32[B] index of the true one)."""
    a, eos = self.config.data.max_answer_tokens, self.tokenizer.eos_id
    enc = lambda text: (self.tokenizer.encode(text)[:a - 1] + [eos])
    b = len(batch['target'])
    if task == 'fav_genre':
      names = self.prepared.genres[2:]
      cands = [[enc(n) for n in names]] * b
      target = np.maximum(batch['target'] - 2, 0)  # OOV genre -> scored as index 0.
    else:
      names = self.prepared.catalogue.names
      negatives = sample_negatives(rng, batch['target'], len(names),
                                   self.config.eval.num_candidates)
      cands, target = [], np.zeros(b, np.int32)
      for i in range(b):
        p = int(batch['prompt_len'][i])
        true = [t for t in batch['tokens'][i, p:p + a].tolist() if t != 0]
        cands.append([true] + [enc(names[j]) for j in negatives[i]])
    out = np.zeros((b, len(cands[0]), a), np.int32)
    for i, row in enumerate(cands):
      for j, c in enumerate(row):
        out[i, j, :len(c)] = c
    return out, target.astype(np.int32)

  def _rouge(self, params, prompts, user, batch):
    """Greedy review generation (max_answer_tokens) scored by ROUGE-Lsum F1."""
    from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
    user = dict(user)
    prefix, prefix_mask = user.pop('prefix', None), user.pop('prefix_mask', None)
    eos = self.tokenizer.eos_id
    out = sampling.generate(
        self.model, params, jnp.asarray(prompts), max_new_tokens=self.config.data.max_answer_tokens,
        prefix=prefix, prefix_mask=prefix_mask, model_kwargs=user, stop_tokens=(eos, 106))
    scorer = rouge_scorer.RougeScorer(['rougeLsum'])
    scores = []
    for r, gen in enumerate(sampling.trim(np.asarray(out), (eos, 106))):
      p = int(batch['prompt_len'][r])
      ref = [t for t in batch['tokens'][r, p:].tolist() if t not in (0, eos)]
      scores.append(_rouge_lsum(scorer, self.tokenizer.decode(ref), self.tokenizer.decode(gen)))
    return {'rougeLsum': np.asarray(scores, np.float32)}

  def evaluate(self, params, step):
    """Per task: the mean of every metric, its 95% bootstrap CI over users
    (`{task}/{metric}_lo`, `_hi`), and the per-example values (`eval_examples`)."""
    ec = self.config.eval
    results, t0 = {}, time.time()
    self._eval_examples = {}
    for task in self.config.eval.tasks:
      rng = np.random.default_rng(ec.seed)
      cols: dict[str, list[np.ndarray]] = {}
      ds = self._dataset(ec.split, task, ec.batch_size, 0, shuffle=False, num_epochs=1)
      for i, batch in enumerate(ds):
        if 0 <= ec.max_batches <= i:
          break
        keep = batch['example_mask']
        prompts = np.zeros((len(keep), int(batch['prompt_len'].max())), np.int32)
        for r, p in enumerate(batch['prompt_len']):  # Left-pad [BOS] prompt.
          if p:
            prompts[r, -p:] = batch['tokens'][r, :p]
        prompts[~keep, -1] = self.tokenizer.bos_id  # Padding rows: a harmless prompt.
        feats = {f: jnp.asarray(batch[f]) for f in self.features}
        user = ul.user_inputs(self.model, params, feats, jnp.asarray(batch['mask']))
        if task == 'review':  # Generated text against the reference: ROUGE-Lsum.
          per = self._rouge(params, prompts, user, batch)
        else:
          cands, target = self._candidates(task, batch, rng)
          scores = ranking.score_candidates(self.model, params, prompts, cands, user,
                                            chunk=ec.candidate_chunk)
          ks = (1,) if task == 'fav_genre' else tuple(ec.ks)
          per = ranking.recall_at(scores, target, ks)
        cols.setdefault('user', []).append(batch['user'][keep])
        for k, v in per.items():
          cols.setdefault(k, []).append(np.asarray(v)[keep])
      ex = {k: np.concatenate(v) for k, v in cols.items()}
      for k, v in ex.items():
        if k == 'user' or not len(v):
          continue
        est = stats.bootstrap(v, ex['user'])
        results[f'{task}/{k}'] = est.mean
        results[f'{task}/{k}_lo'], results[f'{task}/{k}_hi'] = est.lo, est.hi
      results[f'{task}/examples'] = len(ex.get('user', ()))
      self._eval_examples[task] = {k: v.tolist() for k, v in ex.items()}
    results['eval_wall_s'] = time.time() - t0
    return results

  def eval_examples(self):
    return getattr(self, '_eval_examples', None)


def sample_negatives(rng: np.random.Generator, targets: np.ndarray, num_items: int,
                     num_candidates: int) -> np.ndarray:
  """int[B, C-1] item ids drawn uniformly without replacement, never the target.

  Ids 0/1 (pad/OOV) are never drawn; num_candidates 0 = every other item. Draws in
  row order from `rng`, so a reference model can rebuild the same candidates.
  """
  n = num_candidates or (num_items - 2)
  out = []
  for t in targets:
    pool = np.setdiff1d(np.arange(2, num_items), [t])
    out.append(rng.choice(pool, size=min(n - 1, len(pool)), replace=False))
  return np.asarray(out, np.int32)


def _rouge_lsum(scorer, reference: str, generated: str) -> float:
  # rougeLsum splits summaries on newlines; a review is one "sentence" per line.
  return scorer.score(reference, generated)['rougeLsum'].fmeasure


def _merge(init, loaded, name):
  """`loaded` into `init` (LoRA leaves missing from a plain checkpoint keep init)."""
  if isinstance(init, dict):
    return {k: (_merge(v, loaded[k], f'{name}/{k}') if k in loaded else v)
            for k, v in init.items()}
  return loaded
