"""The quantizer step on a batch sharded over 8 fake devices equals the single-device step.

Under jit with a global view, the EMA statistics are global sums (XLA inserts the all-reduce) and
the restart draws from the global batch with a replicated key, so every replica ends with the same
codebook as one device would compute.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rq_jax import quantizer as q


def step(z, state, rng):
    out, new = q.rq_quantize_train(z, state, 4, rng, restart=True)
    usage = q.codebook_usage(out.codes, state.num_codes)
    return out.codes, out.quantized, out.commit_loss, new, usage


def test_sharded_step_equals_single_device():
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(16, 4, 4, 8)).astype(np.float32))
    state = q.init_codebook(jax.random.key(0), 64, 8)
    # warm counts: some codes alive, some dead, so the restart does real work
    state = state._replace(cluster_size_K=jnp.asarray(rng.uniform(0, 3, size=64).astype(np.float32)))
    key = jax.random.key(7)

    with jax.default_device(jax.devices()[0]):
        ref = jax.jit(step)(z, state, key)

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    data = NamedSharding(mesh, P("data"))
    repl = NamedSharding(mesh, P())
    z_sharded = jax.device_put(z, data)
    state_repl = jax.device_put(state, repl)
    out = jax.jit(step, in_shardings=(data, repl, repl), out_shardings=(data, data, repl, repl, repl))(
        z_sharded, state_repl, key
    )
    assert len(out[0].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(ref[0]))
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(ref[1]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(out[2]), float(ref[2]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out[3]), jax.tree.leaves(ref[3]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for k in ref[4]:
        np.testing.assert_allclose(np.asarray(out[4][k]), np.asarray(ref[4][k]), rtol=1e-6)
    # every replica holds the same codebook
    shards = [np.asarray(s.data) for s in out[3].embedding_KxC.addressable_shards]
    assert all(np.array_equal(shards[0], s) for s in shards[1:])
