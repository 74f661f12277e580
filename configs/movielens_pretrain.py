r"""Stage 1: user-encoder pretraining (and baselines) on MovieLens.

Launch (from the repo root):
  python -m launch.main --config configs/movielens_pretrain.py \
      --workdir workdirs/stage1_ar_early
Variants (arg string after ':', comma separated):
  model=ar|dual|bert4rec|popularity   fusion=early|late   runlocal (tiny smoke run)
  synthetic (toy data, no files needed), steps=N
e.g. --config configs/movielens_pretrain.py:model=ar,fusion=late
     --config configs/movielens_pretrain.py:runlocal,synthetic --config.train.num_steps=5
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the stage-1 config; see the module docstring for `arg`."""
  a = common.parse_arg(arg, model='ar', fusion='early', runlocal=False, synthetic=False, steps=0)
  c = ml_collections.ConfigDict()
  c.experiment = 'pretrain'  # Key of user_llm.train.EXPERIMENTS.

  try:  # The data section is owned by data_pipelines; fall back if it is absent.
    import data_pipelines  # pylint: disable=g-import-not-at-top
    c.data = data_pipelines.default_data_config('movielens')
  except (ImportError, AttributeError):
    c.data = ml_collections.ConfigDict(dict(name='movielens', path='', cache_dir='', stride=1,
                                            features=('item', 'genre', 'rating')))
  c.data.seq_len = 50  # History events U per window (paper: 50).
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
  c.model.embed_dims = dict(item=64, genre=16, rating=8)  # Per-feature embedding widths.
  c.model.dropout = 0.1  # Dropout on embeddings and residual branches.
  c.model.dtype = 'float32'  # Compute dtype ('bfloat16' on TPU).
  # AR, Dual Encoder: score only the last K positions of each window (0 = all). With stride-1
  # windows consecutive windows share all but one event, so every event is still a
  # target K times per epoch, with 40-50 events of context like at test time.
  c.model.loss_last_k = 10
  c.model.tie_item_head = True  # AR: item logits = item embeddings . projected output.
  c.model.temperature = 0.05  # Dual Encoder: softmax temperature on cosine scores.
  c.model.mask_prob = 0.2  # Bert4Rec: fraction of item positions [MASK]ed.
  c.model.last_mask_prob = 0.25  # Bert4Rec: rows where only the last event is masked.

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0  # Init, dropout and data-order seed.
  c.train.batch_size = 64  # Global batch (windows).
  c.train.num_steps = a.steps or 2500  # Optimisation steps.
  c.train.lr = 2e-3  # Peak AdamW learning rate.
  c.train.warmup = 200  # Linear warmup steps, then cosine decay.
  c.train.min_lr_ratio = 0.1  # Final lr = lr * min_lr_ratio.
  c.train.weight_decay = 0.01  # AdamW decoupled decay (matrices only).
  c.train.grad_clip = 1.0  # Global-norm gradient clipping.
  c.train.b1 = 0.9  # Adam beta1.
  c.train.b2 = 0.98  # Adam beta2.
  c.train.freeze = []  # Param-path regexes (or (regex, None|'adamw') pairs) to freeze.
  c.train.init_checkpoint = ''  # Start params from another run (used if no own ckpt).
  c.train.log_every = 100  # Steps between log lines / TensorBoard points.
  c.train.ckpt_every = 500  # Steps between Orbax checkpoints (and at the end).
  c.train.keep_checkpoints = 2  # Checkpoints kept on disk.
  c.train.async_checkpoint = True  # Save in a background thread.
  c.train.eval_every = 0  # Steps between evaluations; 0 = only at the end.

  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'test'  # 'test' (last window per user) | 'validation'.
  c.eval.batch_size = 64  # Eval windows per batch.
  c.eval.ks = (1, 5, 10)  # Recall@K cut-offs.
  c.eval.ndcg_k = 10  # NDCG cut-off.
  c.eval.exclude_seen = True  # Drop history items from the candidates (standard for ratings).
  c.eval.max_batches = -1  # -1 = whole split.

  c.mesh = common.mesh()  # [(axis, size)]: data / fsdp / tensor; -1 = the rest.
  c.sharding_rules = common.encoder_sharding_rules()  # Path regex -> per-dim mesh axes.

  if a.model == 'popularity':
    c.train.lr = 0.05  # A bias vector only: converge fast.
    c.train.num_steps = a.steps or 1000
    c.train.warmup = 0
  if a.runlocal:
    c.data.seq_len = 8
    c.data.synthetic_examples = 256
    c.data.synthetic_eval_examples = 32
    c.model.d_model = 16
    c.model.num_heads = 2
    c.model.mlp_dim = 32
    c.model.embed_dims = dict(item=8, genre=4, rating=4)
    c.model.loss_last_k = 4
    c.train.batch_size = 8
    c.train.num_steps = a.steps or 4
    c.train.warmup = 1
    c.train.log_every = 2
    c.train.ckpt_every = 2
    c.eval.batch_size = 8
    c.eval.max_batches = 2
  return c
