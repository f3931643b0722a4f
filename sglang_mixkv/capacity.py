"""``python -m sglang_mixkv.capacity``: KV capacity of layer plans, as a table
(:mod:`mixkv_bench.capacity`; the arithmetic is :mod:`sglang_mixkv.kv_math`).

A command kept where users know it; nothing in the serving core imports this module.
"""

import sys

from mixkv_bench.capacity import main

if __name__ == "__main__":
    sys.exit(main())
