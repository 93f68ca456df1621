"""Ahead-of-time compilation for accelerators this machine does not have (`python -m rq_jax.compile_check`).

`topology`: TPU slice names -> compile-only devices (libtpu's compiler, no TPU needed) and each chip's
peak FLOP/s, HBM bandwidth and capacity. `cost`: FLOPs and matmul traffic counted on the jaxpr, loops
times their trip counts. `report`: one compiled program's memory and roofline against its chip.
"""
