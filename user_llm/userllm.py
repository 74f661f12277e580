"""Stage 2 experiment: User-LLM on a pretrained Gemma (and the text-prompt baseline).

`config.userllm.mode` picks how the user reaches Gemma ('cross_attention',
'soft_prompt', or the 'text_prompt' baseline, which puts the serialised history in
the prompt); `config.userllm.num_latents` > 0 adds the Perceiver; the strategy
(`config.userllm.strategy`: full | lora | enc | proj) sets LoRA and the freeze rules.

Lifecycle (user_llm/experiment.py): `setup()` prepares the data, loads the tokenizer
and builds the model; the encoder's architecture is read from the stage-1 run's
config.json (`config.userllm.encoder_workdir`), never copied into this config.
Init (`load_pretrained`, only when a run starts from scratch): `decoder/` from the
Gemma checkpoint of `config.llm` (converted GGUF or official Orbax), `user_encoder/`
from that stage-1 run unless `config.userllm.random_encoder`.

Training: next-token cross-entropy on the answer tokens (+ EOS) of the task examples
(`config.tasks`, mixed evenly). Evaluation: one evaluator per task of
`config.eval.tasks` (user_llm/evaluators/: candidate ranking by the LLM's likelihood
for next item and favourite genre, ROUGE-Lsum of generated reviews).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import time

from gemma import gm
from gemma import peft
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from user_llm import checkpointing
from user_llm import experiment as experiment_lib
from user_llm import gemma_loader
from user_llm import metrics as metrics_lib
from user_llm.evaluators import candidates
from user_llm.evaluators import review
from user_llm.models import gemma as gemma_lib
from user_llm.models import user_encoder as ue
from user_llm.models import user_llm as ul

# strategy -> param-path regexes frozen (projection, Perceiver and cross-attention
# always train). LoRA also wraps the decoder in gm.nn.LoRA (config.userllm.lora_rank).
STRATEGY_FREEZE = {
    'full': [],
    'lora': [r'decoder/(?!.*lora/).*'],
    'enc': [r'decoder/.*'],
    'proj': [r'decoder/.*', r'user_encoder/.*', r'item_proj/.*'],
}


def freeze_rules(strategy: str, extra=()) -> list:
  """The freeze rules of `strategy` (STRATEGY_FREEZE) followed by `extra`."""
  if strategy not in STRATEGY_FREEZE:
    raise ValueError(f'Unknown config.userllm.strategy {strategy!r}; '
                     f'expected {sorted(STRATEGY_FREEZE)}')
  return STRATEGY_FREEZE[strategy] + list(extra)


def decoder_config(llm_cfg) -> gm.nn.config.TransformerConfig:
  """`config.llm.model`: a `gm.nn` class name, or 'module:function' returning a config
  (e.g. the tests' `configs.testing:tiny_gemma_for_bytes`)."""
  module, sep, fn = llm_cfg.model.partition(':')
  if sep:
    return getattr(importlib.import_module(module), fn)()
  return gemma_lib.gemma_config(llm_cfg.model)


def stage1_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json a stage-1 run (`launch.main`) wrote into `workdir`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'config.userllm.encoder_workdir={workdir!r} has no config.json: give the workdir '
        'of a stage-1 run (configs/movielens_pretrain.py); its encoder architecture and '
        'weights are read from there.')
  return experiment_lib.read_config(path)  # Also a run's old `data.seq_len`.


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


class UserLLMExperiment(experiment_lib.Experiment):
  """Stage 2 (see module docstring)."""

  def setup(self):
    """Prepares the data, loads the tokenizer, builds encoder + Gemma + bridge."""
    import data_pipelines  # pylint: disable=g-import-not-at-top
    from data_pipelines import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top

    config = self.config
    uc = config.userllm
    self.mode = uc.mode
    self.prepared = data_pipelines.prepare(config.data)
    self.features = tuple(config.data.features)
    if config.llm.tokenizer == 'bytes':  # Tests: no SentencePiece model needed.
      self.tokenizer = tok_lib.ByteTokenizer()
    else:
      self._params_dir, tok_path = gemma_loader.resolve_paths(config.llm)
      self.tokenizer = tok_lib.GemmaTokenizer(str(tok_path))
    self.decoder_config = decoder_config(config.llm)
    enc = None
    if self.mode != 'text_prompt':
      enc = self._encoder()
    # The batch arrays the encoder reads (+ timestamps for a stage-1 run's time features).
    self.encoder_inputs = ue.input_names(self.features, enc.time_features if enc else ())
    self.model = ul.UserLLM(
        self.decoder_config, enc, mode=self.mode,
        xattn_layers=xattn_layers(uc, self.decoder_config.num_layers),
        num_latents=uc.num_latents, perceiver_depth=uc.perceiver_depth,
        lora_rank=uc.lora_rank if uc.strategy == 'lora' else 0,
        remat_blocks=config.llm.get('remat_blocks', False),
        item_readout=uc.get('item_readout', False))
    self.length = config.data.max_prompt_tokens + config.data.max_answer_tokens
    self._alignment = self._alignment_examples()
    return self

  def _alignment_examples(self) -> dict[str, np.ndarray] | None:
    """Item alignment's table (`data_pipelines.item_examples`, trimmed to its longest
    row) and its draw weights, or None when `config.train.item_alignment` is 0."""
    import data_pipelines  # pylint: disable=g-import-not-at-top
    tc = self.config.train
    if not tc.get('item_alignment', 0.0):
      return None
    if not self.model.item_readout:
      raise ValueError('config.train.item_alignment needs config.userllm.item_readout=True '
                       '(the item memory it trains is read through item_projection).')
    table = data_pipelines.item_examples(
        self.prepared, self.tokenizer, self.config.data.max_prompt_tokens,
        tc.get('item_alignment_answer_tokens', self.config.data.max_answer_tokens))
    real = table['tokens'] != self.tokenizer.pad_id
    length = min(real.shape[1], -(-int(real.sum(1).max()) // 8) * 8)
    table['tokens'] = table['tokens'][:, :length]
    table['answer_pos'] = np.minimum(table['answer_pos'], length - 1)  # Padding slots only.
    # Items drawn in proportion to (training count) ** power: items never seen in
    # training (an untrained embedding) are never drawn; power < 1 reaches past the
    # most popular ones, which next-item examples already teach.
    counts = self.prepared.item_counts.astype(np.float64)
    w = np.where(counts > 0, counts, 0.0) ** tc.get('item_alignment_power', 0.5)
    table['p'] = (w / w.sum()).astype(np.float32)
    return table

  def _encoder(self) -> ue.UserEncoder:
    """The stage-1 run's encoder, built from its own config.json (weights: load_pretrained)."""
    workdir = self.config.userllm.encoder_workdir
    if not workdir:
      raise ValueError('config.userllm.encoder_workdir is empty: give a stage-1 workdir (its '
                       'architecture is used, and its weights unless random_encoder).')
    s1 = stage1_config(workdir)
    if s1.model.name != 'ar':
      raise ValueError(f'{workdir} trained a {s1.model.name!r} model; stage 2 reads an AR '
                       "encoder (configs/movielens_pretrain.py:model=ar).")
    # The AR encoder has a position per history event: max_len = its history_len.
    history_len, s1_len = self.config.data.history_len, s1.data.history_len
    if history_len > s1_len:
      raise ValueError(
          f'The stage-1 encoder in {workdir} has positions for {s1_len} events, '
          f'config.data.history_len={history_len}: use a stage-1 run with history_len >= '
          f'{history_len} or --config.data.history_len={s1_len}.')
    missing = set(self.features) - set(s1.model.embed_dims)
    if missing:
      raise ValueError(f'The stage-1 encoder in {workdir} has no embedding for {sorted(missing)}.')
    return ue.encoder_from_config(
        s1.model, {f: self.prepared.vocabs[f].size for f in self.features},
        max_len=s1_len, dropout=0.0)

  @property
  def freeze_rules(self):
    return freeze_rules(self.config.userllm.strategy, self.config.train.get('freeze', ()))

  # ---------------------------------------------------------------- params
  def _dummy(self, b=1):
    u = self.config.data.history_len
    feats = {f: jnp.full((b, u), 2, jnp.int32) for f in self.encoder_inputs}
    return feats, jnp.ones((b, u), bool), jnp.full((b, self.length), 2, jnp.int32)

  def init_params(self, rng):
    dtype = jnp.dtype(self.config.llm.param_dtype)
    if not self.config.llm.get('pretrained', True):  # Random decoder (tests, smoke runs).
      params = self.model.init(rng, *self._dummy(), method='init_all')['params']
      base, lora = peft.split_params(params['decoder'])  # LoRA adapters stay float32.
      params['decoder'] = peft.merge_params(jax.tree.map(lambda x: x.astype(dtype), base), lora)
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
    params['decoder'] = peft.merge_params(
        jax.tree.map(lambda s: jnp.zeros(s.shape, dtype),
                     peft.split_params(shapes['decoder']).original),
        peft.split_params(params['decoder']).lora)
    return params

  def load_pretrained(self, params):
    init, params = params, dict(params)
    if self.config.llm.get('pretrained', True):  # (Absent from older config.json.)
      # Straight into the decoder's dtype and shardings (gm.ckpts.load_params).
      target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            init['decoder'])
      gemma = gemma_loader.load_params(self._params_dir, self.decoder_config,
                                       self.config.llm.param_dtype, target=target)
      params['decoder'] = peft.merge_params(gemma, peft.split_params(params['decoder']).lora)
    uc = self.config.userllm
    if self.mode != 'text_prompt' and not uc.random_encoder:
      enc = checkpointing.load_params(uc.encoder_workdir, subtree='user_encoder')
      bad = gemma_loader.first_mismatch(params['user_encoder'], enc)
      if bad:
        raise ValueError(
            f'Stage-1 encoder in {uc.encoder_workdir} does not match the encoder built from '
            f'its config.json over this run\'s data vocabularies: first mismatch at '
            f'user_encoder/{bad}. Train stage 1 on the same data (path, features).')
      params['user_encoder'] = enc
      if self.model.item_readout:  # Stage 1's tied item head (UserEncoderLM.item_proj).
        try:
          params['item_proj'] = checkpointing.load_params(uc.encoder_workdir, subtree='item_proj')
        except KeyError as e:
          raise ValueError(
              f'config.userllm.item_readout needs the tied item head of stage 1 '
              f'(model.tie_item_head=True); {uc.encoder_workdir} has no item_proj.') from e
    # Loaded arrays take the dtype and sharding the trainer gave the fresh params.
    return jax.tree.map(lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding),
                        params, init)

  # ---------------------------------------------------------------- training
  def loss_fn(self, params, batch, rng):
    # Targets at (answer_row, answer_pos) (answer + EOS tokens, [B, A]; the row
    # defaults to the own row, data_pipelines.trim_batch packs them densely), each
    # predicted from the position before it. Logits are computed only there: the
    # 262k-way unembedding is the costliest part of the step.
    tokens, pos = batch['tokens'], batch['answer_pos']
    rows = batch.get('answer_row')
    if rows is None:
      rows = jnp.broadcast_to(jnp.arange(pos.shape[0])[:, None], pos.shape)
    feats = {f: batch[f] for f in self.encoder_inputs}
    targets = tokens[rows, pos]
    w = (batch['answer_mask'] & batch['example_mask'][rows]).astype(jnp.float32)

    weight = self.config.train.get('user_contrast', 0.0)
    if weight and self.mode == 'text_prompt':
      raise ValueError('config.train.user_contrast needs a user side (cross_attention or '
                       'soft_prompt); the text prompt reads its history as text.')
    apply = functools.partial(self.model.apply, {'params': params})

    def answer_nll(out):
      # log p(target) = logit - logsumexp, no argmax (metrics_lib.nll_and_top1).
      return metrics_lib.nll_and_top1(out.logits.astype(jnp.float32), targets)

    if not weight:
      out = apply(feats, batch['mask'], tokens, tokens != 0, pos - 1, rows, method='forward')
    else:  # The user side once; the decoder with it and with its rows rolled by one.
      memory = apply(feats, batch['mask'], method='user_memory')
      decode = lambda m: apply(*m, tokens, tokens != 0, pos - 1, rows,
                               method='decode_with_memory')
      out = decode(memory)
      other = decode(tuple(jnp.roll(x, 1, axis=0) for x in memory))
    nll, top = answer_nll(out)
    loss, acc = metrics_lib.weighted_mean(nll, w), metrics_lib.weighted_mean(top, w)
    aux = {'token_accuracy': acc, **gate_values(params)}
    if weight:
      contrast, margin = self._user_contrast(nll, answer_nll(other)[0], w, rows, batch)
      loss = loss + weight * contrast
      aux.update(user_contrast=contrast, user_margin=margin)
    if self._alignment is not None:
      align = self._item_alignment(params, rng)
      loss = loss + self.config.train.item_alignment * align
      aux['item_alignment'] = align
    return loss, aux

  def _item_alignment(self, params, rng):
    """Mean answer NLL of `config.train.item_alignment_batch` items, each named from its
    own embedding alone (`UserLLM.item_memory`) in reply to the next-item question.

    Why: Gemma sees ~2,000 next-item answers in a benchmark row, so it can only name
    titles it was taught; the encoder's knowledge is keyed by item ids
    (benchmarks/stage2_findings.md). With item_readout the memory of every event holds
    item_projection(item_proj(h)), the vector stage 1's tied head scores items with;
    teaching item_projection -> title over the whole catalogue lets that vector be
    read as the titles it points at. Items are drawn with the step's rng (resumable).
    Measured (benchmarks/stage2_findings.md, session 18): 2,000 draws, each title seen
    about once, teach Gemma the titles' text, not the lookup (`stage2_item_oracle`).
    """
    t = self._alignment
    items = self._alignment_items(rng)
    tokens = jnp.asarray(t['tokens'])[items]
    pos, mask = jnp.asarray(t['answer_pos'])[items], jnp.asarray(t['answer_mask'])[items]
    apply = functools.partial(self.model.apply, {'params': params})
    memory = apply(items, method='item_memory')
    out = apply(*memory, tokens, tokens != self.tokenizer.pad_id, pos - 1,
                method='decode_with_memory')
    nll, _ = metrics_lib.nll_and_top1(out.logits.astype(jnp.float32),
                                      jnp.take_along_axis(tokens, pos, axis=1))
    return metrics_lib.weighted_mean(nll, mask.astype(jnp.float32))

  def _alignment_items(self, rng) -> jax.Array:
    """int[k] the item ids item alignment draws with a step's rng."""
    k = self.config.train.get('item_alignment_batch', self.config.train.batch_size)
    return jax.random.choice(rng, len(self._alignment['p']), (k,),
                             p=jnp.asarray(self._alignment['p']))

  def alignment_draws(self, num_steps: int) -> np.ndarray:
    """int[V_item]: how often each item was drawn in steps 0 .. num_steps - 1 of a run
    of this config (the trainer's rng replayed, `train.step_rng_of`)."""
    from user_llm import train  # pylint: disable=g-import-not-at-top
    _, rng = train.seed_rngs(self.config.train.seed)
    draw = jax.jit(lambda s: self._alignment_items(train.step_rng_of(rng, s)))
    items = np.concatenate([np.asarray(draw(s)) for s in range(num_steps)])
    return np.bincount(items, minlength=len(self._alignment['p']))

  def _user_contrast(self, nll, nll_other, w, rows, batch):
    """(loss, mean margin): each answer should be likelier with its own user's history.

    Row b's answer is scored twice: with its own user side (nll) and with that of row
    b - 1 (nll_other; `UserLLM.decode_with_memory` on the rolled memory), prompt and
    answer unchanged.
    The loss is softplus(-margin), margin = log p(answer | own user) - log p(answer |
    other user), over rows whose neighbour is a real example of another user. The
    answer prior cancels in the margin, so this trains exactly what the LM loss
    leaves to a few thousand examples: that the user side moves the answer
    (benchmarks/stage2_shuffle.py measures the same difference at test time).
    """
    b = batch['example_mask'].shape[0]
    per_row = lambda x: jax.ops.segment_sum((x * w).ravel(), rows.ravel(), num_segments=b)
    margin = per_row(nll_other) - per_row(nll)  # log p(own) - log p(other), per row.
    ex, user = batch['example_mask'], batch['user']
    valid = (ex & jnp.roll(ex, 1) & (user != jnp.roll(user, 1))
             & (per_row(jnp.ones_like(w)) > 0)).astype(jnp.float32)
    return (metrics_lib.weighted_mean(jax.nn.softplus(-margin), valid),
            metrics_lib.weighted_mean(margin, valid))

  def dataset(self, split, task, batch_size, seed, **kw):
    """This process's batches of `task` on `split` (data_pipelines.make_dataset)."""
    import data_pipelines  # pylint: disable=g-import-not-at-top
    # trim_multiple is read now, not at prepare() time: a changed config applies.
    kw = {'text_prompt': self.mode == 'text_prompt',
          'trim_multiple': self.config.data.get('trim_multiple', 0), **kw}
    return data_pipelines.make_dataset(
        self.prepared, split, task, batch_size=batch_size, seed=seed, tokenizer=self.tokenizer,
        process_index=jax.process_index(), process_count=jax.process_count(), **kw)

  def train_dataset(self, seed):
    tasks = list(self.config.tasks)
    ds = [self.dataset('train', t, self.config.train.batch_size, seed + i)
          for i, t in enumerate(tasks)]
    mixed = ds[0] if len(ds) == 1 else grain.IterDataset.mix(ds, [1.0] * len(ds))
    return iter(mixed)

  # ---------------------------------------------------------------- evaluation
  def evaluators(self) -> list:
    """One evaluator per task of config.eval.tasks (user_llm/evaluators/)."""
    return [review.ReviewRouge(self) if task == 'review' else
            candidates.CandidateRanking(self, task) for task in self.config.eval.tasks]

  def evaluate(self, params, step):
    """Per task: the mean of every metric, its 95% bootstrap CI over users
    (`{task}/{metric}_lo`, `_hi`), and the per-example values (`eval_examples`)."""
    results, t0 = {}, time.time()
    self._eval_examples = {}
    params = self.inference_params(params)
    for evaluator in self.evaluators():
      metrics, examples = evaluator.run(params)
      results.update(metrics)
      self._eval_examples[evaluator.task] = {k: v.tolist() for k, v in examples.items()}
    results['eval_wall_s'] = time.time() - t0
    return results

  def inference_params(self, params):
    """The params the evaluators read: LoRA adapters cast to the decoder's dtype.

    Why: float32 adapters on a bfloat16 Gemma promote every projection, and the KV
    cache, to float32 (`gemma.compute_dtype`), which XLA:CPU runs much slower here (a
    200-event text-prompt evaluation batch of 4 users: 133-137 s instead of 71-74 s,
    compilation included; benchmarks/lora_eval_dtype.py). Cast, the adapter product x @ A @ B is computed in bfloat16
    (rounded relative to its own output, not folded into W). Training keeps them
    float32. `config.eval.lora_in_param_dtype` False evaluates in float32.
    """
    if not self.config.eval.get('lora_in_param_dtype', True) or 'decoder' not in params:
      return params
    base, lora = peft.split_params(params['decoder'])
    if not lora:
      return params
    dtype = jnp.dtype(self.config.llm.param_dtype)
    return {**params, 'decoder': peft.merge_params(
        base, jax.tree.map(lambda x: x.astype(dtype), lora))}

  def eval_examples(self):
    return getattr(self, '_eval_examples', None)
