"""Seams for models a plan describes (``served.plan_for(hf_config)`` is not None): pools,
the one-window radix cache, the triton window, fast prefill. Every other model passes
through them unchanged. Registered by :func:`sglang_mixkv.sglang_seams.register`."""
