"""Helpers the tests share."""

from __future__ import annotations

import sys

#: Prefix for a child command a test sends SIGINT to (Ctrl-C). A background job of a shell
#: without job control starts with SIGINT ignored, an ignored signal stays ignored across
#: exec, and Python then never raises KeyboardInterrupt: the child would run to the end.
#: This resets SIGINT to its default and execs the command in the same process (same pid).
SIGINT_DEFAULT = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, "
                  "signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]
