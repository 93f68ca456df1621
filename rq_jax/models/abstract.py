"""Abstract models (shapes and dtypes, no arrays) built fast: what restoring a checkpoint starts from.

`nnx.eval_shape(lambda: Model(config, rngs=nnx.Rngs(0)))` traces every parameter's initialiser, and at
each random draw flax writes the RNG stream's counter back into its Variable. For a traced counter that
write asks the tracer for `.sharding`, which JAX answers with an AttributeError whose message walks the
whole trace so far (`DynamicJaxprTracer._origin_msg`), so the build is quadratic in the number of
parameters: 2.4-2.6 s for the FFHQ RQ-VAE or its 355M transformer on the development CPU, half of
loading a run for `python -m rq_jax.sample`. With the RNG streams held as JAX refs the write skips that
check: 0.5-0.6 s, and the same graph and abstract state.

`compile_module_fn` compiles a function of a module from its abstract version, so a command's programs
compile while its checkpoints are still being read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from flax import nnx

M = TypeVar("M", bound=nnx.Module)


def ref_rngs(seed: int | jax.Array) -> nnx.Rngs:
    """nnx.Rngs(seed) whose streams are JAX refs: the same random numbers, without the quadratic cost when a
    model is initialised inside a trace (`jax.jit`, `jax.eval_shape`). Use it to build, not to keep."""
    with nnx.var_defaults(ref=True):
        return nnx.Rngs(seed)


def abstract_module(build: Callable[[nnx.Rngs], M], seed: int = 0) -> M:
    """`nnx.eval_shape(lambda: build(nnx.Rngs(seed)))`, without its quadratic tracing cost."""

    def make() -> M:
        return build(ref_rngs(seed))  # only the RNG streams are refs; the model's Variables are as usual

    return nnx.eval_shape(make)


def compile_module_fn(module: nnx.Module, fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """`fn(module, *args)` jitted with the module's state as an argument (as `rq_jax.eval.io.jit_module_fn`
    does) and compiled ahead of time for these shapes.

    `module` may be abstract (`nnx.eval_shape`) and `args` `jax.ShapeDtypeStruct`s, so the program compiles
    before the weights are read. Returns `call(module, *args)`, which raises TypeError for arguments of
    other shapes and ValueError for a module of another structure.
    """
    graph, state = nnx.split(module)
    jitted = jax.jit(lambda s, *a: fn(nnx.merge(graph, s), *a))
    state_aval, args_aval = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (state, args))
    compiled = jitted.trace(state_aval, *args_aval).lower().compile()

    def call(module: nnx.Module, *args: Any) -> Any:
        module_graph, module_state = nnx.split(module)
        if module_graph != graph:
            raise ValueError("This module's structure differs from the one the program was compiled for.")
        return compiled(module_state, *args)

    return call
