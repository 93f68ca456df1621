"""The trainer's sample grid: a few rows of samples (classes, captions or unconditional) drawn from the model
being trained, on its mesh, for the images the stage-2 trainer writes (`rq_transformer.write_samples`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rq_jax.sampling import SamplingConfig, sample_codes


def sampling_config(config: ml_collections.ConfigDict) -> SamplingConfig:
    s = config.sample
    return SamplingConfig(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, cfg_scale=s.cfg_scale)


def _identity(x: Any) -> Any:  # module level: the gather compiles once, not at every grid
    return x


def process_local_copy(tree: Any) -> Any:
    """`tree` with every array that spans several processes gathered in full onto this process's first device.

    One program gathers them all (the only cross-process communication of a sample grid); arrays that live on
    this process only are returned as they are."""
    def spans(x):
        return isinstance(x, jax.Array) and not x.is_fully_addressable

    leaves, treedef = jax.tree.flatten(tree)
    idx = [i for i, x in enumerate(leaves) if spans(x)]
    full = jax.jit(_identity, out_shardings=[NamedSharding(leaves[i].sharding.mesh, P()) for i in idx])(
        [leaves[i] for i in idx])
    for i, x in zip(idx, full, strict=True):
        leaves[i] = x.addressable_data(0)  # replicated: the shard on this process's first device is the whole array
    return jax.tree.unflatten(treedef, leaves)


MAX_GRID_CLASSES = 16


def grid_rows(config: ml_collections.ConfigDict, num_classes: int, num_captions: int) -> np.ndarray:
    """The rows of the sample grid: class ids (all up to 16 classes, else 16 spread over the range: ImageNet's
    1,000 x `sample.num` images would not fit one device), caption indices (4 spread over the captions), or
    [0] (unconditional)."""
    if config.model.cond == "class":
        k = max(num_classes, 1)
        return np.unique(np.linspace(0, k - 1, num=min(k, MAX_GRID_CLASSES)).astype(int))
    if config.model.cond == "text":
        return np.linspace(0, num_captions - 1, num=min(4, num_captions)).astype(int)
    return np.zeros((1,), int)


GRID_CHUNK = 64


def grid_chunk(batch: int) -> int:
    """Images per sampler call of the grid: the largest divisor of `batch` up to GRID_CHUNK. The KV caches grow
    with the rows: the 1.4B model's grid of 256 images needs 15.9 GB on one device (`rq_jax.compile_check`)."""
    return max(d for d in range(1, min(batch, GRID_CHUNK) + 1) if batch % d == 0)


def gather_for_grid(platform: str, process_count: int) -> bool:
    """Whether the sample grid gathers the parameters onto one device per process (see `sample_grid`)."""
    return process_count > 1 and platform == "cpu"


def _replicated(x: Any, like: Any) -> Any:
    """A host value (the same on every process) as a replicated global array on `like`'s mesh, or as it is."""
    mesh = getattr(getattr(like, "sharding", None), "mesh", None)
    if not isinstance(mesh, jax.sharding.Mesh):
        return jnp.asarray(x)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_replicated(jax.random.key_data(x), like))
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(x))


def _host(x: Any) -> np.ndarray:
    """A replicated or fully addressable array as numpy on this process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(process_local_copy(x))
    return np.asarray(x)


def sample_grid(model, codebook_KxC, decoder, config, rng, num_classes: int, text_table) -> np.ndarray:
    """[rows, H, W, 3] images: one row per class, per caption (text) or one unconditional row, sampled
    `grid_chunk` images at a time.

    The sampler runs over the parameters where they are (the mesh; with several processes, every process must
    call this and receives the whole grid). Except on CPU hosts with several processes: there the parameters
    are first gathered onto each process's first device and every process samples and decodes the same grid on
    its own, without communicating. Why: the sampler is a sequential loop over the T positions, and with the
    parameters sharded across processes (FSDP) every step all-reduces partial results between the processes:
    over gloo/TCP the runlocal model's 16x16x4 grid made 256 iterations x 48 all-reduces, 35-95 s per grid. On
    TPU and GPU the gathered copy does not fit: the 1.4B model's parameters and one 64-image chunk need 15.8 GB
    on one v5e chip (`rq_jax.compile_check`), while over the mesh they stay sharded."""
    n = int(config.sample.num)
    if config.model.cond == "class":
        cond = np.repeat(grid_rows(config, num_classes, 0), n).astype(np.int32)
    elif config.model.cond == "text":
        rows = grid_rows(config, 0, len(text_table) - 1)
        cond = np.repeat(_host(text_table)[rows], n, axis=0)
    else:
        cond = None
    batch = n if cond is None else int(cond.shape[0])
    if gather_for_grid(jax.default_backend(), jax.process_count()):
        graph, state = nnx.split(model)
        state, codebook_KxC = process_local_copy((state, codebook_KxC))
        model = nnx.merge(graph, state)
    chunk = grid_chunk(batch)
    parts = []
    for i, start in enumerate(range(0, batch, chunk)):  # one compiled program: every chunk has `chunk` images
        part = None if cond is None else _replicated(cond[start:start + chunk], codebook_KxC)
        key = _replicated(rng if chunk == batch else jax.random.fold_in(rng, i), codebook_KxC)
        parts.append(_host(sample_codes(model, codebook_KxC, part, key, batch=chunk, cfg=sampling_config(config))))
    codes = np.concatenate(parts)
    images = np.asarray(decoder.decode(jnp.asarray(codes)))  # the decoder lives on one device
    return images.reshape(-1, n, *images.shape[1:])
