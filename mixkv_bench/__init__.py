"""Measurement: everything that orchestrates servers and reads what they did.

May import the serving core (:mod:`sglang_mixkv`), the load generator (:mod:`harness`),
pandas and matplotlib; nothing in the serving core imports this package (the
``python -m sglang_mixkv.<cmd>`` commands are thin aliases of the commands here).

    bench           make bench / make capacity: one server per variant, the sweep or the probe
    settings        what a bench run is (plans, workload, budget), defaults per device
    servers         our server for a variant: command, lifetime, /server_info
    bench_roofline  the roofline beside a run: hardware, predicted duration, bound per level
    bench_report    the run's report: throughput, latency, bounds, capacity
    capacity        the capacity formula per plan as a table (python -m sglang_mixkv.capacity)
    roofline        what the hardware allows per plan, workload and level
    probe           the most long requests a server holds at once (measured capacity)
    soak            many mixed requests against one server; it must stay up, its pool empty
    reference       the plain-PyTorch model the tests (and training) compare against
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
