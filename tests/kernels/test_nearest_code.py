"""The Pallas nearest-code kernels (interpret mode on the CPU) against the plain-jnp reference.

Shapes are chosen so that N and K are not multiples of the blocks and the feature dimension needs
padding; tiny block configs force many grid steps and codebook tiles. Lowering for real hardware is
checked without it: the GPU kernel must lower to a Triton call, the TPU kernel to a Mosaic call.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rq_jax.kernels.nearest_code import nearest_code, nearest_code_reference, resolve_impl
from rq_jax.kernels.nearest_code.pallas_gpu import GpuBlockConfig, nearest_code_gpu
from rq_jax.kernels.nearest_code.pallas_tpu import TpuBlockConfig, nearest_code_tpu

# Small tiles: many codebook tiles and row blocks even for the small shapes of the tests.
SMALL_CONFIG = {"pallas_gpu": GpuBlockConfig(block_n=16, block_k=32), "pallas_tpu": TpuBlockConfig(16, 128)}
KERNELS = {"pallas_gpu": nearest_code_gpu, "pallas_tpu": nearest_code_tpu}


def _kernel(impl: str, z_NxC, codebook_KxC, *, small: bool = True, **kwargs):
    config = SMALL_CONFIG[impl] if small else None
    return KERNELS[impl](z_NxC, codebook_KxC, config=config, interpret=True, **kwargs)


def _separated_data(n: int, k: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """z near random codebook rows (noise far below the code spacing): no near-ties anywhere."""
    rng = np.random.default_rng(seed)
    codebook_KxC = rng.normal(size=(k, c)).astype(np.float32)
    z_NxC = codebook_KxC[rng.integers(0, k, n)] + 0.01 * rng.normal(size=(n, c)).astype(np.float32)
    return z_NxC.astype(np.float32), codebook_KxC


# N in {1, 37, 300} x K in {5, 64, 333}, each pair once, cycling C and the dtypes through them.
_NK = list(itertools.product((1, 37, 300), (5, 64, 333)))
_C = (4, 64, 256)
_DTYPES = (("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16"))
CASES = [(n, k, _C[(i + i // 3) % 3], _DTYPES[i % 3]) for i, (n, k) in enumerate(_NK)]


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize("n,k,c,dtypes", CASES, ids=[f"N{n}-K{k}-C{c}-{d[0]}-{d[1]}" for n, k, c, d in CASES])
def test_kernel_matches_reference(impl, n, k, c, dtypes):
    z_np, e_np = _separated_data(n, k, c)
    z_NxC, codebook_KxC = jnp.asarray(z_np, dtypes[0]), jnp.asarray(e_np, dtypes[1])
    idx_ref, dist_ref = nearest_code_reference(z_NxC, codebook_KxC, block_k=16)
    idx, dist = _kernel(impl, z_NxC, codebook_KxC)
    assert idx.shape == (n,) and idx.dtype == jnp.int32
    assert dist.shape == (n,) and dist.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(idx_ref))
    # ||z||^2 + ||e||^2 - 2 z.e: the rounding error of the dot (whose summation order differs between
    # implementations) scales with the norms, not with the small distance itself.
    scale = float(jnp.max(jnp.sum(jnp.square(z_NxC.astype(jnp.float32)), axis=-1)))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(dist_ref), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_default_config(impl):
    """config=None means the default blocks (one large tile here)."""
    z_np, e_np = _separated_data(300, 333, 64, seed=1)
    idx_ref, dist_ref = nearest_code_reference(jnp.asarray(z_np), jnp.asarray(e_np))
    idx, dist = _kernel(impl, jnp.asarray(z_np), jnp.asarray(e_np), small=False)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(idx_ref))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(dist_ref), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu", "pallas_tpu"])
def test_ties_go_to_lowest_index(impl):
    """Duplicate codebook rows, within one tile and across tiles: the lowest index wins.

    Small integers make every distance exact, so the ties are exact in any summation order.
    """
    rng = np.random.default_rng(2)
    k, c = 300, 8
    codebook_KxC = rng.integers(-3, 4, size=(k, c)).astype(np.float32)
    # Copies of row 3 at 5 (same tile), 40 and 200 (later tiles of every block size used here).
    for j in (5, 40, 200):
        codebook_KxC[j] = codebook_KxC[3]
    z_NxC = np.concatenate([codebook_KxC[[3, 5, 40, 200]], rng.integers(-3, 4, size=(60, c))]).astype(
        np.float32
    )
    dist_NxK = ((z_NxC[:, None, :] - codebook_KxC[None, :, :]) ** 2).sum(-1)
    expected = dist_NxK.argmin(axis=1)  # numpy: first minimum
    assert (expected[:4] == 3).all()
    if impl == "xla":
        idx, dist = nearest_code_reference(jnp.asarray(z_NxC), jnp.asarray(codebook_KxC), block_k=32)
    else:
        idx, dist = _kernel(impl, jnp.asarray(z_NxC), jnp.asarray(codebook_KxC))
    np.testing.assert_array_equal(np.asarray(idx), expected)
    np.testing.assert_array_equal(np.asarray(dist), dist_NxK.min(axis=1))


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_gumbel_matches_reference(impl):
    z_np, e_np = _separated_data(37, 333, 4, seed=3)
    z_NxC = jnp.asarray(z_np) * 0.3  # soften: the samples should differ from the argmin
    codebook_KxC = jnp.asarray(e_np) * 0.3
    argmin_ref, _ = nearest_code_reference(z_NxC, codebook_KxC)
    for seed, temperature in ((0, 1.0), (2**32 - 1, 0.5)):
        idx_ref, dist_ref = nearest_code_reference(
            z_NxC, codebook_KxC, gumbel_seed=seed, temperature=temperature, block_k=64
        )
        idx, dist = _kernel(impl, z_NxC, codebook_KxC, gumbel_seed=seed, temperature=temperature)
        np.testing.assert_array_equal(np.asarray(idx), np.asarray(idx_ref))
        np.testing.assert_allclose(np.asarray(dist), np.asarray(dist_ref), rtol=1e-5, atol=1e-5)
        assert (np.asarray(idx) != np.asarray(argmin_ref)).any(), "the Gumbel samples never left the argmin"
    # A traced seed (the training step's case) through the public function.
    sample = jax.jit(
        lambda s: nearest_code(
            z_NxC, codebook_KxC, impl=impl, interpret=True, gumbel_seed=s, block_config=SMALL_CONFIG[impl]
        )
    )
    np.testing.assert_array_equal(
        np.asarray(sample(jnp.uint32(7))),
        np.asarray(nearest_code_reference(z_NxC, codebook_KxC, gumbel_seed=7)[0]),
    )
    # Temperature -> 0: the noise no longer matters.
    idx_cold, _ = _kernel(impl, z_NxC, codebook_KxC, gumbel_seed=5, temperature=1e-9)
    np.testing.assert_array_equal(np.asarray(idx_cold), np.asarray(argmin_ref))


def test_public_function_shapes_and_auto():
    assert resolve_impl("auto", "cpu") == "xla"
    assert resolve_impl("auto", "gpu") == "pallas_gpu" and resolve_impl("pallas", "tpu") == "pallas_tpu"
    if jax.default_backend() == "cpu":
        assert resolve_impl("auto") == "xla"
    z_np, e_np = _separated_data(2 * 3 * 5, 64, 16, seed=4)
    z = jnp.asarray(z_np).reshape(2, 3, 5, 16)
    codebook_KxC = jnp.asarray(e_np)
    idx_ref, dist_ref = nearest_code_reference(z.reshape(-1, 16), codebook_KxC)
    for impl in ("auto", "xla", "pallas_gpu", "pallas_tpu"):
        idx, dist = nearest_code(z, codebook_KxC, impl=impl, return_distance=True, interpret=impl != "xla")
        assert idx.shape == (2, 3, 5) and dist.shape == (2, 3, 5), impl
        np.testing.assert_array_equal(np.asarray(idx).reshape(-1), np.asarray(idx_ref))
        np.testing.assert_allclose(np.asarray(dist).reshape(-1), np.asarray(dist_ref), rtol=1e-5, atol=1e-5)
    assert nearest_code(z, codebook_KxC).shape == (2, 3, 5)


def test_errors():
    z, codebook_KxC = jnp.zeros((4, 8)), jnp.zeros((16, 8))
    with pytest.raises(ValueError, match="Unknown nearest_code impl 'cuda'"):
        nearest_code(z, codebook_KxC, impl="cuda")
    with pytest.raises(
        ValueError, match="Feature dimension 7 does not match the codebook's embedding dimension 8"
    ):
        nearest_code(jnp.zeros((4, 7)), codebook_KxC)
    for impl in KERNELS:
        with pytest.raises(ValueError, match="Expected z"):
            KERNELS[impl](jnp.zeros((4, 7)), codebook_KxC, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        GpuBlockConfig(block_n=48)
    with pytest.raises(ValueError, match="multiple of 128"):
        TpuBlockConfig(block_k=200)
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="needs a GPU or TPU"):
            nearest_code(z, codebook_KxC, impl="pallas")


def _lowering_args(dtype, c):
    z = jax.ShapeDtypeStruct((300, c), dtype)
    codebook = jax.ShapeDtypeStruct((333, c), dtype)
    return z, codebook, jax.ShapeDtypeStruct((), jnp.uint32)


LOWERING_CASES = [(jnp.float32, 4), (jnp.float32, 256), (jnp.bfloat16, 256)]


@pytest.mark.parametrize("dtype,c", LOWERING_CASES)
def test_gpu_kernel_lowers_to_triton(dtype, c):
    fn = lambda z, e, s: nearest_code_gpu(z, e, gumbel_seed=s)
    text = jax.jit(fn).trace(*_lowering_args(dtype, c)).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text
    text = jax.jit(lambda z, e: nearest_code_gpu(z, e)).trace(*_lowering_args(dtype, c)[:2])
    assert "__gpu$xla.gpu.triton" in text.lower(lowering_platforms=("cuda",)).as_text()


@pytest.fixture
def tpu_chip_for_cpu(monkeypatch):
    """Registers a TPU v5e description for the CPU's device kind, so that Mosaic lowering runs here.

    Uses JAX internals (the registry consulted by `get_tpu_info`); a JAX change skips the test.
    """
    try:
        from jax._src.pallas.mosaic import tpu_info

        registry = tpu_info.registry
        chip = tpu_info.get_tpu_info_for_chip(tpu_info.ChipVersion.TPU_V5E, 1)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        pytest.skip(f"JAX's private TPU chip registry changed: {e!r}")
    monkeypatch.setitem(registry, jax.devices()[0].device_kind, lambda: chip)


@pytest.mark.parametrize("dtype,c", LOWERING_CASES)
def test_tpu_kernel_lowers_to_mosaic(tpu_chip_for_cpu, dtype, c):
    fn = lambda z, e, s: nearest_code_tpu(z, e, gumbel_seed=s)
    try:
        lowered = jax.jit(fn).trace(*_lowering_args(dtype, c)).lower(lowering_platforms=("tpu",))
    except ValueError as e:
        if "Unsupported TPU device kind" in str(e):
            pytest.skip(f"the chip-registry hack no longer reaches Mosaic lowering: {e}")
        raise
    assert "tpu_custom_call" in lowered.as_text()
    lowered = jax.jit(lambda z, e: nearest_code_tpu(z, e)).trace(*_lowering_args(dtype, c)[:2])
    assert "tpu_custom_call" in lowered.lower(lowering_platforms=("tpu",)).as_text()
