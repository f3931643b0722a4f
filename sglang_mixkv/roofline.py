"""``python -m sglang_mixkv.roofline``: The roofline lower bound per plan and level (:mod:`mixkv_bench.roofline`).

A command kept where users know it; nothing in the serving core imports this module.
"""

import sys

from mixkv_bench.roofline_cli import main

if __name__ == "__main__":
    sys.exit(main())
