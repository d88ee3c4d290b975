"""Load testing with Locust: stream and non-stream scenarios, LLM latency metrics (TTFT, ITL, TPOT,
E2E, goodput) with exact percentiles, open- and closed-loop load, sweeps, master/worker runs,
workloads (load/workloads: length distributions, ShareGPT, shared prefixes, multi-turn, trace
replay), and a self-check against the reference server's mock engine. `python -m load --help`.

Only `load.users`, `load.runner`, `load.worker` and `load/locustfile.py` import Locust (which
monkey-patches the process for gevent); everything else is plain Python.
"""
