"""Serving User-LLM: incremental user memory, a persistent per-user store, an HTTP API.

  incremental.py  the encoder's KV cache per user and the memory update (no re-encode)
  store.py        SQLite (WAL, synchronous=FULL): events + cached encoder state per user
  server.py       the Starlette app: events, asks batched into one generate call
Entry point: `python -m launch.serve --workdir W` (launch/serve.py).
"""
