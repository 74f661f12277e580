"""Tiny configs for tests: Gemma-3-structured (GQA, qk-norm, local+global layers)."""

from gemma import gm


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
