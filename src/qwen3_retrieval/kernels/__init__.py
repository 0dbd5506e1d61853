"""How the in-process engines run fast and stay exact: the CPU kernels under the engines.

Packed batches (``packed``, with its float32 decoder layers in ``packed_decoder``) and padded ones
(``padded``), the KV cache a shared reranker prefix is run into (``kv_cache``), pooling (``pooling``), faster
layers put in place at load (``fused``), concurrent calls merged into shared batches (``microbatch``) and fork
safety (``forking``). Only the engines and loading use them.
"""
