"""``python -m sglang_mixkv.bench``: ``make bench`` / ``make capacity`` (:mod:`mixkv_bench.bench`).

A command kept where users know it; nothing in the serving core imports this module.
"""

import sys

from mixkv_bench.bench import main

if __name__ == "__main__":
    sys.exit(main())
