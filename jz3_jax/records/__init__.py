"""Record I/O shared by every stage: JSON-lines reading and writing (`jsonl`), the file-format
dispatcher of `corpus` and `data` (`formats`) and per-process shards (`shards`).

This is core code: it imports only `jz3_jax.errors`, `jz3_jax.runtime.paths` / `runtime.shards`
and libraries, never `jz3_jax.config` or a stage package.
"""
