"""Tiny test-only variants of the configs (a random 4-layer Gemma, a byte tokenizer).

Not a launch config: tests call these functions; production configs carry no
test branches.
"""

from gemma import gm
import ml_collections

from configs import movielens_userllm


def tiny_gemma_config(num_layers: int = 4, vocab: int = 64) -> gm.nn.config.TransformerConfig:
  """A 4-layer Gemma 3 look-alike: GQA (4 query, 2 kv heads), qk-norm, 1 global : 1 local."""
  local, glob = gm.nn.AttentionType.LOCAL_SLIDING, gm.nn.AttentionType.GLOBAL
  return gm.nn.config.TransformerConfig(
      final_logit_softcap=None,
      num_embed=vocab,
      embed_dim=32,
      hidden_dim=64,
      num_heads=4,
      head_dim=8,
      num_kv_heads=2,
      use_post_attn_norm=True,
      use_post_ffw_norm=True,
      use_qk_norm=True,
      attention_types=gm.nn.config.make_attention_layers_types(
          (local, glob), num_layers=num_layers
      ),
      sliding_window_size=4,
      transpose_gating_einsum=True,
      local_base_frequency=10_000,
      global_base_frequency=1_000_000,
  )


def tiny_gemma_for_bytes() -> gm.nn.config.TransformerConfig:
  """`tiny_gemma_config` with room for `data_pipelines.tokenizer.ByteTokenizer` ids."""
  return tiny_gemma_config(vocab=260)


def tiny_userllm_config(arg: str = '', dataset: str = 'movielens') -> ml_collections.ConfigDict:
  """configs/movielens_userllm.py:runlocal,ARG (of `dataset`) on the tiny Gemma, the byte
  tokenizer and 8-event windows (the length of configs/*_pretrain.py:runlocal's encoder)."""
  c = movielens_userllm.get_config(','.join(filter(None, ['runlocal', arg])), dataset=dataset)
  c.data.history_len = 8
  c.data.max_prompt_tokens = 24 * 8 + 64 if c.userllm.mode == 'text_prompt' else 32
  c.data.max_answer_tokens = 16
  c.llm.model = 'configs.testing:tiny_gemma_for_bytes'
  c.llm.pretrained = False
  c.llm.tokenizer = 'bytes'
  c.llm.param_dtype = 'float32'
  c.userllm.xattn_every = 2
  c.userllm.lora_rank = 2
  return c


def tiny_decoder(seed: int = 0):
  """(config, GemmaDecoder, params) of `tiny_gemma_config`, weights perturbed away from
  init (so that logits differ between tokens)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from user_llm.models import gemma as gemma_lib  # pylint: disable=g-import-not-at-top
  cfg = tiny_gemma_config()
  dec = gemma_lib.GemmaDecoder(cfg)
  params = dec.init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32))['params']
  params = jax.tree.map(
      lambda x: x + 0.2 * jax.random.normal(jax.random.PRNGKey(seed + 1), x.shape), params)
  return cfg, dec, params
