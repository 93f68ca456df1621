"""Weight-only reduced precision for inference: Linear kernels stored in bfloat16, float32 accumulation.

Sampling a large RQ-Transformer at small batch reads every weight once per position and depth step, so
bfloat16 kernels halve the bytes read (and the weight memory). The activations are rounded to bfloat16 at
each matmul and the products accumulate in float32 (`preferred_element_type`). Layer norms, embeddings,
the attention softmax and the logits stay float32. Whether it is faster depends on the backend: on the
2-core development CPU (XLA:CPU, AVX512-BF16) the whole sampler was slower than in float32
(benchmarks/RESULTS.md), so float32 is the default.

The quality cost is measured, not assumed: `benchmarks/vs_official.py --sample_dtype bfloat16` reports the
largest logit difference and the fraction of codes that agree with float32 sampling on a fixed seed.
"""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

WEIGHT_DTYPES = ("float32", "bfloat16")
M = TypeVar("M", bound=nnx.Module)


def with_weight_dtype(model: M, dtype: str | jnp.dtype) -> M:
    """A copy of `model` whose nnx.Linear kernels are `dtype` and multiply in `dtype` with float32 results.

    "float32" returns the model unchanged. The original is not modified (its arrays are shared where
    unchanged). An abstract model (`nnx.eval_shape`) gives the abstract copy, with the same graph.
    Meant for inference (sampling, evaluation); training keeps float32 master weights.
    """
    name = jnp.dtype(dtype).name
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"Weight dtype {name!r} is not supported; choose one of {WEIGHT_DTYPES}.")
    if name == "float32":
        return model
    graph, state = nnx.split(model)
    copy = nnx.merge(graph, jax.tree.map(lambda a: a, state))  # new Variables around the same arrays
    for _, module in nnx.iter_modules(copy):
        if isinstance(module, nnx.Linear):
            kernel = module.kernel.get_value()
            if isinstance(kernel, jax.ShapeDtypeStruct):  # an abstract model: compile before the weights exist
                kernel = jax.ShapeDtypeStruct(kernel.shape, jnp.dtype(name), sharding=kernel.sharding)
            else:
                kernel = kernel.astype(name)
            module.kernel.set_value(kernel)
            module.dtype = jnp.dtype(name)
            module.preferred_element_type = jnp.float32
    return copy
