"""Fixes to SGLang 0.5.17 for any model served with this plugin installed: request
validation, crash fixes, the torch_native backend's SWA reads, rotary embeddings on a
CPU, Gemma 3n / 4 loading and windows. Registered by :func:`sglang_mixkv.sglang_seams.register`."""
