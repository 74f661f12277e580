r"""Stage 1: user-encoder pretraining (and baselines) on MovieLens (and, through
`get_config(arg, dataset=...)`, configs/amazon_pretrain.py and configs/google_local_pretrain.py).

Launch (from the repo root):
  python -m launch.main --config configs/movielens_pretrain.py \
      --workdir workdirs/stage1/standard/ar_early_s0
Variants (arg string after ':', comma separated):
  model=ar|dual|bert4rec|popularity   fusion=early|late   runlocal (tiny smoke run)
  seen_bias=True|False (AR, Bert4Rec: learned offset for items already in the window)
  item_dropout=P (AR: training-time share of input items read as OOV; default 0)
  future=H (AR: the items 1..H events ahead are targets of the item softmax; default 5,
    1 = the next event only)
  time=gap+year (AR, early fusion: event-time features from the timestamps; default none)
  side=genres+year (AR, tied head: item content in each item's output embedding)
  ema=D (evaluate and export an exponential moving average of the params, decay D; 0 = off)
  protocol=standard|multi_target|full_window|selection|selection_multi (docs/stage1.md)
  synthetic (toy data, no files needed), steps=N
  path=DIR, reviews_file=FILE, meta_file=FILE (the data files; or --config.data.path=...)
e.g. --config configs/movielens_pretrain.py:model=ar,fusion=late
     --config configs/movielens_pretrain.py:runlocal,synthetic --config.train.num_steps=5
"""

import ml_collections

from configs import common


PROTOCOLS = {  # name -> data fields (docs/stage1.md, "Protocols").
    # (a) Leave-one-out over all users: last event test, the one before validation,
    # histories of up to history_len events left-padded.
    'standard': dict(pad_short=True, test_events=1, valid_events=1, min_events=-1,
                     drop_last_events=0),
    # (b) Each user's last 5 events are test targets, each with the history before it.
    'multi_target': dict(pad_short=True, test_events=5, valid_events=1, min_events=-1,
                         drop_last_events=0),
    # (c) Users with a full window only (>= history_len + 2 events): stage 2's layout.
    'full_window': dict(pad_short=False, test_events=1, valid_events=1, min_events=-1,
                        drop_last_events=0),
    # Model selection: (a) on timelines without their last event (the (a) test target,
    # never read), so its "test" target is (a)'s validation event, and it follows an
    # event that no training window holds, as (a)'s test target does.
    'selection': dict(pad_short=True, test_events=1, valid_events=1, min_events=-1,
                      drop_last_events=1),
    # Model selection with 5x the targets: each timeline without its last 5 events (all
    # of (b)'s test targets, hence (a)'s, never read), then (b)'s split: the 5 events
    # before them are the targets (3,050), each with the history before it.
    'selection_multi': dict(pad_short=True, test_events=5, valid_events=1, min_events=-1,
                            drop_last_events=5),
}


def set_protocol(c: ml_collections.ConfigDict, name: str) -> None:
  """Sets the split fields of `c.data` for protocol `name` (see PROTOCOLS)."""
  if name not in PROTOCOLS:
    raise ValueError(f'Unknown protocol {name!r}; known: {sorted(PROTOCOLS)}')
  c.data.update(PROTOCOLS[name])
  c.data.protocol = name


def get_config(arg: str | None = None, dataset: str = 'movielens') -> ml_collections.ConfigDict:
  """Returns the stage-1 config of `dataset`; see the module docstring for `arg`."""
  a = common.parse_arg(arg, model='ar', fusion='early', protocol='standard', runlocal=False,
                       synthetic=False, steps=0, seen_bias=True, item_dropout=0.0, future=5, ema=0.0,
                       time='', side='',
                       **common.DATA_FILE_ARGS)
  c = ml_collections.ConfigDict()
  c.experiment = 'user_llm.pretrain:PretrainExperiment'  # user_llm/experiment.py

  try:  # The data section is owned by data_pipelines; fall back if it is absent.
    import data_pipelines  # pylint: disable=g-import-not-at-top
    c.data = data_pipelines.default_data_config(dataset)
  except (ImportError, AttributeError):
    c.data = ml_collections.ConfigDict(dict(name=dataset, path='', cache_dir='', stride=1,
                                            features=('item', 'genre', 'rating')))
  common.set_data_files(c.data, a)
  c.data.history_len = 50  # History events U before a target (paper: 50).
  set_protocol(c, a.protocol)
  # Training windows step back 10 events from the last training event; with
  # loss_last_k = 10 below every training event is a target once per epoch with
  # >= 40 events of context (ablation in benchmarks/stage1_results.md).
  c.data.stride = 10
  if a.synthetic:
    c.data.name = 'synthetic'  # Toy windows generated in user_llm/pretrain.py.
  # Synthetic data only: vocabulary sizes (incl. pad/OOV) and number of windows.
  c.data.synthetic_vocab = dict(item=64, genre=8, rating=7)
  c.data.synthetic_examples = 4096
  c.data.synthetic_eval_examples = 256

  c.model = ml_collections.ConfigDict()
  c.model.name = a.model  # 'ar' (User-LLM encoder) | 'dual' | 'bert4rec' | 'popularity'.
  c.model.fusion = a.fusion  # 'early' (concat features, project) | 'late' (tower per feature).
  c.model.d_model = 64  # Transformer width D.
  c.model.num_layers = 2  # Transformer blocks.
  c.model.num_heads = 2  # Attention heads N (head dim D / N).
  c.model.mlp_dim = 128  # MLP hidden width F.
  # Per-feature embedding widths (gap, year: the time features below, when on).
  c.model.embed_dims = dict(item=64, genre=16, rating=8, gap=8, year=8)
  # AR, early fusion: event-time features computed from each event's timestamp
  # (`user_encoder.time_ids`): 'gap' = log2 seconds since the previous event (a rating
  # sitting vs a return weeks later), 'year' = calendar year (which films were new).
  c.model.time_features = tuple(t for t in a.time.split('+') if t)
  c.model.time_origin_year = 1995  # Year bucket 0 (earlier years clip to it).
  # AR, tied head: each item's output embedding adds its content, 'genres' (mean of all
  # its genre embeddings) and 'year' (release year from a MovieLens title), so rarely
  # rated items are scored by what they are (`pretrain.item_side_tables`).
  c.model.item_side = tuple(t for t in a.side.split('+') if t)
  c.model.dropout = 0.2  # Dropout on embeddings and residual branches.
  c.model.norm = 'pre'  # 'pre' | 'post' LayerNorm (post: SASRec's layout; ablation in docs/stage1.md).
  c.model.dtype = 'float32'  # Compute dtype ('bfloat16' on TPU).
  # AR, Dual Encoder: score only the last K positions of each window (0 = all). K =
  # data.stride makes every training event a target once per epoch, with at least
  # history_len - K events of context, close to the full history seen at test time.
  c.model.loss_last_k = 10
  # AR: features with a next-event head (loss summed over them); () = every feature.
  c.model.head_features = ()
  c.model.tie_item_head = True  # AR: item logits = item embeddings . projected output.
  # AR: a learned logit offset for the items already in the window (MovieLens users rate
  # a movie once; validation R@10 0.077 -> 0.100: benchmarks/stage1_results.md).
  c.model.seen_item_bias = a.seen_bias
  # AR: training-time probability of reading an input item as OOV (its genre and rating
  # stay), Bert4Rec-style input noise. 0 = off (default): 0.2 raised validation R@10
  # 0.100 -> 0.113 on one seed without separating (paired CI includes 0), and test R@10
  # over 3 seeds did not follow (0.0830 vs 0.0863; benchmarks/stage1_results.md).
  c.model.item_dropout = a.item_dropout
  # AR: the items 2..H events ahead are extra targets of the item softmax at each scored
  # position, weighted future_weight (1 = next event only, the paper's objective).
  # MovieLens users rate movies in batches, so the order inside a sitting is noisy;
  # H = 5 raised validation R@10 over 3 seeds 0.096 -> 0.110, paired +0.014
  # [0.002, 0.026] (H 3 / 10 and weight 1.0 on seed 0: benchmarks/stage1_results.md).
  c.model.future_targets = a.future
  c.model.future_weight = 0.5
  c.model.temperature = 0.05  # Dual Encoder: softmax temperature on cosine scores.
  c.model.mask_prob = 0.2  # Bert4Rec: fraction of item positions [MASK]ed.
  c.model.last_mask_prob = 0.25  # Bert4Rec: rows where only the last event is masked.

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0  # Init, dropout and data-order seed.
  c.train.batch_size = 64  # Global batch (windows).
  # 20 epochs of the 10,173 standard-protocol windows (validation Recall@10 was
  # still rising at 12 epochs and flat from 16; benchmarks/stage1_results.md).
  c.train.num_steps = a.steps or 3180  # Optimisation steps.
  c.train.flop_budget = 0.0  # Stop once training has spent this many FLOPs (XLA cost analysis; 0 = off).
  c.train.lr = 2e-3  # Peak AdamW learning rate.
  c.train.warmup = 100  # Linear warmup steps, then cosine decay.
  c.train.min_lr_ratio = 0.1  # Final lr = lr * min_lr_ratio.
  c.train.weight_decay = 0.01  # AdamW decoupled decay (matrices only).
  c.train.grad_clip = 1.0  # Global-norm gradient clipping.
  # > 0: keep an exponential moving average of the params (decay warmed up as
  # min(d, (1 + step) / (10 + step))), evaluated and exported instead of the params.
  c.train.ema_decay = a.ema
  c.train.b1 = 0.9  # Adam beta1.
  c.train.b2 = 0.98  # Adam beta2.
  c.train.freeze = []  # Param-path regexes (or (regex, None|'adamw') pairs) to freeze.
  c.train.init_checkpoint = ''  # Start params from another run (used if no own ckpt).
  c.train.log_every = 100  # Steps between log lines / TensorBoard points.
  c.train.ckpt_every = 500  # Steps between Orbax checkpoints (and at the end).
  c.train.keep_checkpoints = 2  # Checkpoints kept on disk.
  c.train.async_checkpoint = True  # Save in a background thread.
  c.train.eval_every = 0  # Steps between evaluations; 0 = only at the end; -1 = never.

  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'test'  # 'test' (last window per user) | 'validation'.
  c.eval.batch_size = 64  # Eval windows per batch.
  c.eval.ks = (1, 5, 10)  # Recall@K cut-offs.
  c.eval.ndcg_k = 10  # NDCG cut-off.
  # Rankings reported: 'all' = every catalogue item (keys recall@K: the standard
  # leave-one-out protocol), 'unseen' = without the items of the user's whole past
  # (keys unseen/recall@K).
  c.eval.rankings = ('all', 'unseen')
  c.eval.ci_metrics = ('recall@10', 'ndcg@10', 'unseen/recall@10')  # 95% bootstrap CIs.
  c.eval.max_batches = -1  # -1 = whole split.

  c.mesh = common.mesh()  # [(axis, size)]: data / fsdp / tensor; -1 = the rest.
  c.sharding_rules = common.encoder_sharding_rules()  # Path regex -> per-dim mesh axes.

  if a.model == 'popularity':
    c.train.lr = 0.05  # A bias vector only: converge fast.
    c.train.num_steps = a.steps or 1000
    c.train.warmup = 0
  if a.runlocal:
    c.data.history_len = 8
    c.data.synthetic_examples = 256
    c.data.synthetic_eval_examples = 32
    c.model.d_model = 16
    c.model.num_heads = 2
    c.model.mlp_dim = 32
    c.model.embed_dims = dict(item=8, genre=4, rating=4, gap=4, year=4)
    c.model.loss_last_k = 4
    c.train.batch_size = 8
    c.train.num_steps = a.steps or 4
    c.train.warmup = 1
    c.train.log_every = 2
    c.train.ckpt_every = 2
    c.eval.batch_size = 8
    c.eval.max_batches = 2
  return c
