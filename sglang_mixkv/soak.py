"""``python -m sglang_mixkv.soak``: Many mixed requests against one server (:mod:`mixkv_bench.soak`).

A command kept where users know it; nothing in the serving core imports this module.
"""

import sys

from mixkv_bench.soak import main

if __name__ == "__main__":
    sys.exit(main())
