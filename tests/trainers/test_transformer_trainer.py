"""Stage 2 end to end on tiny configs: extract -> train -> sample (the run: tests/conftest.py's session fixture
`tiny_stage2_runs`), and the loss falls below log K."""

import json
import math
import shutil
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.data.features import FeatureSource
from rq_jax.trainers import rq_transformer as t2
from tests.helpers import assert_one_line_error
from tests.helpers import load_repo_config as load_config


@pytest.mark.slow
def test_extract_train_and_sample(tiny_stage2_runs):
    from rq_jax.sample import main

    tmp, config, scalars = tiny_stage2_runs
    feats = FeatureSource(str(tmp / "features"), "train").read(np.arange(64))
    assert feats["features"].shape == (64, 16, 16, 32) and feats["flipped"].sum() == 32  # 32 images + flips
    assert sorted(zip(feats["source_index"], feats["flipped"], strict=True)) == [
        (i, f) for i in range(32) for f in (False, True)]
    meta = json.loads((tmp / "features" / "meta.json").read_text())
    q_tau = meta["q_tau"]  # the extractor's Q_tau table
    assert {"tau", "entropy_bits", "p_nearest"} <= set(q_tau["rows"][0]) and len(q_tau["rows"][0]["entropy_bits"]) == 4
    assert np.isfinite(scalars["eval/bits_per_code"]) and (tmp / "transformer" / "images").exists()
    out = tmp / "s1.png"
    main(["--workdir", str(tmp / "transformer"), "--classes", "1,2", "--num", "2", "--seed", "3", "--out", str(out)])
    main(["--workdir", str(tmp / "transformer"), "--classes", "1,2", "--num", "2", "--seed", "3",
          "--out", str(tmp / "s2.png")])
    a, b = np.load(tmp / "s1.npz"), np.load(tmp / "s2.npz")
    assert a["codes"].shape == (4, 16, 16, 4) and a["images"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(a["images"], b["images"])  # same seed, same images
    assert out.exists()
    main(["--workdir", str(tmp / "transformer"), "--classes", "all", "--num", "1", "--out", str(tmp / "all.png")])
    np.testing.assert_array_equal(np.load(tmp / "all.npz")["cond"], np.arange(meta["num_classes"]))  # the data's
    # bfloat16 weights: the sampler compiles from the abstract bf16 model while the float32 weights load
    main(["--workdir", str(tmp / "transformer"), "--classes", "1,2", "--num", "2", "--seed", "3",
          "--weight_dtype", "bfloat16", "--out", str(tmp / "bf16.png")])
    bf16 = np.load(tmp / "bf16.npz")
    assert bf16["codes"].shape == a["codes"].shape and bf16["images"].shape == a["images"].shape


@pytest.mark.slow
def test_sample_cli_errors(tiny_stage2_runs):
    from rq_jax.sample import main

    tmp, _, _ = tiny_stage2_runs
    with pytest.raises(ValueError, match=r"Class ids \[10\] are out of range: this model has classes 0..9"):
        main(["--workdir", str(tmp / "transformer"), "--classes", "10", "--out", str(tmp / "x.png")])
    with pytest.raises(ValueError, match=r"not a stage-2 'rq_transformer' run"):
        main(["--workdir", str(tmp / "rqvae"), "--out", str(tmp / "x.png")])
    # a stage-1 run whose code shape differs from the transformer's (same parameters, depth 2 instead of 4)
    other = tmp / "rqvae_depth2"
    if not other.exists():
        shutil.copytree(tmp / "rqvae", other)
        cfg = json.loads((other / "config.json").read_text())
        cfg["model"]["code_shape"] = [*cfg["model"]["code_shape"][:2], 2]
        (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"has code shape \(16, 16, 2\) and K=64, but the transformer expects "
                                         r"\(16, 16, 4\) and K=64; pass the stage-1 run it was trained on"):
        main(["--workdir", str(tmp / "transformer"), "--rqvae", str(other), "--out", str(tmp / "x.png")])


@pytest.mark.slow
@pytest.mark.parametrize("flags, message, code", [
    (["--num", "0"], "--num must be at least 1 (samples per row), got 0.", 2),
    (["--num", "-2"], "--num must be at least 1 (samples per row), got -2.", 2),
    (["--top_k", "-5"], "--top_k must be in [0, 64] (0: no top-k; K = 64), got -5.", 2),
    (["--top_k", "65"], "--top_k must be in [0, 64] (0: no top-k; K = 64), got 65.", 2),
    (["--top_p", "0"], "--top_p must be in (0, 1], got 0.", 2),
    (["--temperature", "0"], "--temperature must be > 0, got 0.", 2),
    (["--top_k", "a,b"], "--top_k takes a number or one per depth ('512,256,128,64'), got 'a,b'.", 2),
    (["--classes", "10"], "Class ids [10] are out of range: this model has classes 0..9.", 2),
    (["--step", "99"], "has no step 99; its steps are ", 1),
])
def test_sample_cli_one_line_errors(tiny_stage2_runs, capsys, flags, message, code):
    from rq_jax import cli
    from rq_jax.sample import main

    tmp, _, _ = tiny_stage2_runs
    with pytest.raises(SystemExit) as info:
        cli.run(main, ["--workdir", str(tmp / "transformer"), "--out", str(tmp / "x.png"), *flags])
    assert_one_line_error(capsys.readouterr().err, message, code=info.value.code, want_code=code)


def test_loss_falls_well_below_log_k_on_a_fixed_code_set():
    c = load_config("configs/transformer/demo.py", "runlocal")
    c.soft.soft_labels, c.soft.stochastic_codes = False, False
    c.model.dropout = 0.0
    c.train.lr, c.train.warmup_steps, c.train.weight_decay = 3e-3, 5, 0.0
    k, (h, w, _), n_z = c.model.vocab_size, c.model.code_shape, c.model.embed_dim
    rng = np.random.default_rng(0)
    codebook = jnp.asarray(rng.normal(size=(k, n_z)).astype(np.float32))
    batch = {"features": jnp.asarray(rng.normal(size=(8, h, w, n_z)).astype(np.float32)),
             "label": jnp.arange(8, dtype=jnp.int32) % 10, "caption": jnp.zeros((8,), jnp.int32)}
    model = t2.RQTransformer(c.model, rngs=nnx.Rngs(0))
    graph, params = nnx.split(model)
    tx, _ = t2.make_optimizer(c.train, 200)
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt=tx.init(params),
                 rng=jax.random.key_data(jax.random.key(0)))
    step = jax.jit(partial(t2.train_step, graph=graph, config=c, tx=tx))
    losses = []
    for _ in range(150):
        state, m = step(state, batch, codebook, jnp.zeros((1, 1), jnp.int32))
        losses.append(float(m["loss"]))
    assert losses[0] > 0.8 * math.log(k)
    assert np.mean(losses[-5:]) < 0.25 * math.log(k), losses[-5:]


def test_weight_decay_skips_norms_biases_and_embeddings():
    c = load_config("configs/transformer/demo.py", "runlocal")
    _, params = nnx.split(t2.RQTransformer(c.model, rngs=nnx.Rngs(0)))
    mask = t2.decay_mask(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    decayed = [p for p, v in flat.items() if v]
    assert decayed and all("kernel" in p for p in decayed)
    assert not any(v for p, v in flat.items() if "emb" in p or "bias" in p or "scale" in p)


@pytest.mark.slow
def test_text_conditioned_training_and_prompts(tiny_stage2_runs):
    from rq_jax.sample import main

    tmp, c_class, _ = tiny_stage2_runs
    c = load_config("configs/transformer/demo.py", "runlocal")
    c.rqvae, c.rqvae_workdir, c.data.features_dir = c_class.rqvae, c_class.rqvae_workdir, c_class.data.features_dir
    c.model.update(dict(cond="text", text_len=6, text_vocab_size=64))
    c.text.vocab_size = 48
    scalars = t2.train(c, str(tmp / "text"))
    assert np.isfinite(scalars["eval/bits_per_code"]) and (tmp / "text" / "tokenizer.json").exists()
    main(["--workdir", str(tmp / "text"), "--prompt", "digit three", "--prompt", "digit seven", "--num", "2",
          "--out", str(tmp / "t.png")])
    assert np.load(tmp / "t.npz")["codes"].shape[0] == 4
    with pytest.raises(ValueError, match=r"is \d+ tokens long but the model takes at most 6"):
        main(["--workdir", str(tmp / "text"), "--prompt", "digit one two three four five six seven",
              "--out", str(tmp / "t2.png")])
