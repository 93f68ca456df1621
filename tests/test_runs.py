"""rq_jax.runs: stage-1 / stage-2 runs are restored exactly, and a mismatched pair is refused with a clear sentence.

The runs are written as the converter writes them (config.json + an orbax state at step 0, no training), from
freshly initialised tiny models of the demo's runlocal configs, so the tests take a few seconds.
"""


import jax
import numpy as np
import pytest
from flax import nnx

from rq_jax import runs
from rq_jax.checkpoints import Checkpointer
from rq_jax.models.rq_transformer import RQTransformer
from rq_jax.models.rqvae import RQVAE, CodebookVar
from tests.helpers import load_repo_config


def _write_run(workdir, config, state):
    ckpt = Checkpointer(str(workdir), max_to_keep=1, async_save=False, with_data=False)
    ckpt.save(0, {"step": np.int32(0), **state}, force=True)
    ckpt.close()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def _stage1(workdir, config, seed):
    model = RQVAE(config.model, rngs=nnx.Rngs(seed))
    _, gen, codebook = nnx.split(model, nnx.Param, CodebookVar)
    _write_run(workdir, config, {"gen": gen, "codebook": codebook})
    return model


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """root/{rqvae, transformer, other_rqvae}: a matching stage-1/stage-2 pair and a stage-1 run with another K."""
    root = tmp_path_factory.mktemp("runs")
    c2 = load_repo_config("configs/transformer/demo.py", "runlocal")
    c1 = c2.rqvae
    vae = _stage1(root / "rqvae", c1, seed=1)
    other = load_repo_config("configs/rqvae/demo.py", "runlocal")
    other.model.codebook_size = int(c1.model.codebook_size) // 2
    _stage1(root / "other_rqvae", other, seed=2)
    with c2.ignore_type():
        c2.rqvae_workdir = str(root / "rqvae")
        c2.data.features_dir = str(root / "no_features")
    transformer = RQTransformer(c2.model, rngs=nnx.Rngs(3))
    _write_run(root / "transformer", c2, {"params": nnx.state(transformer)})
    return root, vae, transformer


def _assert_same_state(a, b):
    flat_a, flat_b = nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, va), (_, vb) in zip(flat_a, flat_b, strict=True):
        for x, y in zip(jax.tree.leaves(va.get_value()), jax.tree.leaves(vb.get_value()), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_load_rqvae_restores_the_saved_parameters_and_codebook(tiny_runs):
    root, vae, _ = tiny_runs
    loaded, config, step = runs.load_rqvae(str(root / "rqvae"))
    assert step == 0 and config.stage == "rqvae"
    _assert_same_state(loaded, vae)


def test_load_stage2_pairs_the_transformer_with_its_stage1_run(tiny_runs):
    root, vae, transformer = tiny_runs
    run = runs.load_stage2(str(root / "transformer"))
    assert run.step == 0 and run.rqvae_workdir == str(root / "rqvae") and run.meta == {}
    _assert_same_state(run.model, transformer)
    _assert_same_state(run.decoder, vae)


def test_mismatched_or_missing_runs_are_refused_with_a_clear_sentence(tiny_runs):
    root, _, _ = tiny_runs
    with pytest.raises(ValueError, match=r"has code shape .* and K=\d+, but the transformer expects .*pass the "
                       "stage-1 run it was trained on with --rqvae"):
        runs.load_stage2(str(root / "transformer"), rqvae=str(root / "other_rqvae"))
    with pytest.raises(ValueError, match="not a stage-1 'rqvae' run"):
        runs.load_rqvae(str(root / "transformer"))
    with pytest.raises(ValueError, match="not a stage-2 'rq_transformer' run"):
        runs.load_stage2(str(root / "rqvae"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs.load_stage2(str(root / "missing"))


def test_loading_reads_only_the_model_entries_at_the_models_paths(tiny_runs, monkeypatch):
    """The fast path restores straight onto the abstract model's paths and shapes; it never needs the saved
    tree's metadata (`restore_onto`, the slower fallback that exists for clear errors)."""
    root, vae, transformer = tiny_runs

    def no_fallback(*args, **kwargs):
        raise AssertionError("restore_onto was called: the direct restore failed")

    monkeypatch.setattr(runs.checkpoints, "restore_onto", no_fallback)
    _assert_same_state(runs.load_rqvae(str(root / "rqvae"))[0], vae)
    _assert_same_state(runs.load_rq_transformer(str(root / "transformer"))[0], transformer)


def test_a_checkpoint_of_another_model_than_its_config_is_refused_with_a_clear_sentence(tiny_runs, tmp_path):
    import shutil

    root, _, _ = tiny_runs
    run = tmp_path / "mixed"
    shutil.copytree(root / "other_rqvae", run)  # weights of a model with half the codes ...
    shutil.copy(root / "rqvae" / "config.json", run / "config.json")  # ... under the other model's config
    with pytest.raises(runs.checkpoints.CheckpointError, match=r"does not match the model described by its "
                       r"config.json \(at .*codebook.*\); it was written by another model configuration"):
        runs.load_rqvae(str(run))


def test_the_plan_reads_no_weights_and_its_programs_run_on_the_loaded_models(tiny_runs, monkeypatch):
    """`plan_stage2` gives the configs and abstract models (so a command compiles before loading); programs
    compiled from them take the loaded models and give what the plain jitted calls give."""
    import jax.numpy as jnp

    from rq_jax.eval.io import jit_module_fn
    from rq_jax.models.abstract import compile_module_fn
    from rq_jax.sampling import SamplingConfig, compile_sampler, sample_codes

    root, _, _ = tiny_runs
    with monkeypatch.context() as m:
        m.setattr(runs.checkpoints, "restore_parts", lambda *a, **k: pytest.fail("the plan read a checkpoint"))
        plan = runs.plan_stage2(str(root / "transformer"))
        with pytest.raises(ValueError, match="but the transformer expects"):  # refused before any weight is read
            runs.plan_stage2(str(root / "transformer"), rqvae=str(root / "other_rqvae"))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(plan.model)))
    cfg, cond = SamplingConfig(top_k=4), jnp.arange(2)
    sampler = compile_sampler(plan.model, plan.decoder.codebook_state.embedding_KxC, cond, batch=2, cfg=cfg)
    codes_aval = jax.ShapeDtypeStruct((2, *plan.model.code_shape), jnp.int32)
    decode = compile_module_fn(plan.decoder, lambda vae, c: vae.decode(c), codes_aval)

    run = runs.load_stage2(str(root / "transformer"), plan=plan)
    codebook = run.decoder.codebook_state.embedding_KxC
    codes = sampler(run.model, codebook, cond, jax.random.key(4))
    want = sample_codes(run.model, codebook, cond, jax.random.key(4), batch=2, cfg=cfg)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(decode(run.decoder, codes)),
                                  np.asarray(jit_module_fn(run.decoder, lambda vae, c: vae.decode(c))(codes)))
    with pytest.raises(TypeError, match="Argument types differ"):
        sampler(run.model, codebook[:-1], cond, jax.random.key(4))  # another codebook size
    with pytest.raises(ValueError, match="rows for a batch of 2"):
        sampler(run.model, codebook, jnp.arange(3), jax.random.key(4))
    with pytest.raises(ValueError, match="structure differs"):
        decode(run.model, codes)
