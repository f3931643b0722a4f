"""``python -m sglang_mixkv.sizes``: Write a model folder or print the model sizes (:mod:`sglang_mixkv.model_folder`).

A command kept where users know it; nothing in the serving core imports this module.
"""

import sys

from sglang_mixkv.model_folder import main

if __name__ == "__main__":
    sys.exit(main())
