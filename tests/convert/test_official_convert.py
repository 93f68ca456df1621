"""`python -m rq_jax.convert official`: official PyTorch checkpoints -> rq_jax run directories.

  (b) numeric round trips through files and the CLI: shrunk copies of the released CC-3M (text, yaml, tokenizer)
      and FFHQ (no yaml) checkpoints, random values -> model.pt -> CLI -> loaders -> arrays in Flax layouts;
  (c) the golden tiny official model through the CLI reproduces the official outputs;
  (e) errors: shape mismatches, yaml disagreements, missing files, no torch.
(a), every released state dict at full size, is test_official_released.py; (d), the layer layouts,
test_layer_layouts.py; the synthetic official files all three use are official_files.py.
"""

import json
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rq_jax.convert import rq_transformer as tf_convert
from rq_jax.convert import rqvae as vae_convert
from rq_jax.convert.__main__ import main
from rq_jax.convert.official_run import convert_official
from tests.convert.official_files import (
    check_loaded_params,
    needs_torch,
    random_state_dict,
    read_shapes,
    shrink,
    stage1_yaml,
    stage2_yaml,
    write_official,
)

# ---- (b) shrunk released checkpoints: numeric round trips through files and the CLI ------------------------
IMAGENET_DIMS = {128: 32, 256: 64, 512: 128, 16384: 64, 16385: 65}
FFHQ_DIMS = {128: 32, 256: 64, 512: 128, 2048: 32, 2049: 33}
CC3M_DIMS = {1280: 64, 5120: 256, 256: 64, 16384: 64}
FFHQ_TF_DIMS = {1024: 64, 4096: 256, 256: 64, 2048: 32}
KEEP = {"body": 2, "head": 1}


def tiny_char_bpe(folder: pathlib.Path) -> pathlib.Path:
    """A small CharBPE tokenizer saved under the official file names (bpe-16k-vocab.json, bpe-16k-merges.txt)."""
    from tokenizers import CharBPETokenizer

    tok = CharBPETokenizer(unk_token="[UNK]", lowercase=True)
    texts = ["a red apple", "a cat", "a painting of a cat", "the red cat"] * 4
    tok.train_from_iterator(texts, vocab_size=48, special_tokens=["[PAD]", "[UNK]"], show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_model(str(folder), "bpe-16k")
    return folder


@pytest.fixture(scope="module")
def shrunk_cc3m(tmp_path_factory):
    """Shrunk CC-3M stage 2 + ImageNet stage 1 with yaml, converted with --stage1 and --tokenizer_dir."""
    root = tmp_path_factory.mktemp("cc3m")
    sd1 = random_state_dict(shrink(read_shapes("stage1_imagenet_rqvae_8x8x4"), IMAGENET_DIMS), seed=1)
    sd2 = random_state_dict(shrink(read_shapes("cc3m-rqtransformer-8x8x4-650M"), CC3M_DIMS, KEEP), seed=2)
    write_official(root / "in256" / "stage1", sd1, stage1_yaml(64, [8], "imagenet", ch=32, z=64, embed=64))
    write_official(root / "cc3m" / "stage2", sd2, stage2_yaml(64, 2, 1, 4, 64, 64, 32, "cc3m", input_embed=64))
    tok_dir = tiny_char_bpe(root / "tokenizer_files")
    out = root / "out"
    main(["official", "--ckpt", str(root / "cc3m" / "stage2" / "model.pt"), "--stage1", str(root / "in256" / "stage1"),
          "--tokenizer_dir", str(tok_dir), "--out", str(out)])
    return dict(root=root, out=out, sd1=sd1, sd2=sd2, tok_dir=tok_dir)


@needs_torch
def test_shrunk_cc3m_round_trip(shrunk_cc3m):
    from rq_jax.runs import load_rq_transformer, load_rqvae

    out, sd1, sd2 = shrunk_cc3m["out"], shrunk_cc3m["sd1"], shrunk_cc3m["sd2"]
    vae, config1, step = load_rqvae(str(out / "stage1"))
    assert step == 0 and tuple(config1.model.attn_resolutions) == (8,) and config1.model.ch == 32
    used = check_loaded_params(vae, sd1, vae_convert.official_name)
    cb = vae.codebook_state
    np.testing.assert_array_equal(np.asarray(cb.embedding_KxC), sd1["quantizer.codebooks.0.weight"][:64])
    np.testing.assert_array_equal(np.asarray(cb.cluster_size_K), sd1["quantizer.codebooks.0.cluster_size_ema"])
    np.testing.assert_array_equal(np.asarray(cb.embed_sum_KxC), sd1["quantizer.codebooks.0.embed_ema"])
    assert used | {n for n in sd1 if n.startswith("quantizer.codebooks.")} == set(sd1)

    tf, config2, _ = load_rq_transformer(str(out / "stage2"))
    assert check_loaded_params(tf, sd2, tf_convert.official_name) == set(sd2)
    assert (config2.model.cond, config2.model.text_len, config2.model.text_vocab_size) == ("text", 32, 64)
    assert tf.cond_classifier is not None and tf.spatial_len == 95
    assert config2.rqvae_workdir == str(out / "stage1") and os.path.isabs(config2.rqvae_workdir)
    assert config2.model.vocab_size == config1.model.codebook_size == 64
    assert (config2.soft.temperature, config2.train.b2, config2.train.grad_clip) == (0.5, 0.95, 1.0)

    # the tokenizer: copied and saved where sampling and training look for it, lower-cased like the official one
    from tokenizers import CharBPETokenizer

    from rq_jax.text import encode_texts, load_tokenizer

    tok_files = shrunk_cc3m["tok_dir"]
    reference = CharBPETokenizer.from_file(str(tok_files / "bpe-16k-vocab.json"), str(tok_files / "bpe-16k-merges.txt"),
                                           unk_token="[UNK]", lowercase=True)
    for tokenizer_path in (out / "stage2" / "tokenizer.json", config2.text.tokenizer):
        tok = load_tokenizer(str(tokenizer_path))
        ids = encode_texts(tok, ["A Red CAT"], 32)[0]
        want = reference.encode("A Red CAT").ids
        assert list(ids[: len(want)]) == want and (ids[len(want):] == tok.token_to_id("[PAD]")).all()
    assert (pathlib.Path(config2.text.tokenizer) / "vocab.json").read_text() == \
        (tok_files / "bpe-16k-vocab.json").read_text()

    report = (out / "conversion_report.txt").read_text()
    for name in (*sd1, *sd2):
        assert re.search(rf"^stage\d  {re.escape(name)} ", report, re.M), name
    assert "ignored: top-level entry 'epoch'" in report
    assert "CC-BY-NC-SA 4.0" in (out / "LICENSE_WEIGHTS.txt").read_text()
    for stage in ("stage1", "stage2"):
        assert (out / stage / "LICENSE_WEIGHTS.txt").exists() and (out / stage / "official_config.yaml").exists()


@needs_torch
def test_shrunk_ffhq_without_yaml_round_trip(tmp_path):
    """No config.yaml anywhere: the config is inferred from shapes and the stage-1 folder is found as ../stage1."""
    from rq_jax.runs import load_rq_transformer, load_rqvae

    sd1 = random_state_dict(shrink(read_shapes("stage1_ffhq_rqvae_8x8x4"), FFHQ_DIMS), seed=3)
    sd2 = random_state_dict(shrink(read_shapes("ffhq256-rqtransformer-8x8x4-350M"), FFHQ_TF_DIMS, KEEP), seed=4)
    write_official(tmp_path / "ffhq" / "stage1", sd1, extra={"optimizer": {"lr": 1.0}})
    write_official(tmp_path / "ffhq" / "stage2", sd2, wrap=False)
    main(["official", "--ckpt", str(tmp_path / "ffhq" / "stage2"), "--out", str(tmp_path / "out")])

    vae, config1, _ = load_rqvae(str(tmp_path / "out" / "stage1"))
    tf, config2, _ = load_rq_transformer(str(tmp_path / "out" / "stage2"))
    check_loaded_params(vae, sd1, vae_convert.official_name)
    assert check_loaded_params(tf, sd2, tf_convert.official_name) == set(sd2)
    codebook = np.asarray(vae.codebook_state.embedding_KxC)
    np.testing.assert_array_equal(codebook, sd1["quantizer.codebooks.0.weight"][:32])
    assert tuple(config1.model.attn_resolutions) == (16,) and config1.model.codebook_size == 32
    assert (config2.model.cond, config2.model.num_heads, config2.model.vocab_size) == ("none", 1, 32)
    report = (tmp_path / "out" / "conversion_report.txt").read_text()
    assert report.count("has no config.yaml") == 2 and "top-level entry 'optimizer'" in report


# ---- (c) the golden tiny official model through the CLI ----------------------------------------------------
def tiny_stage1_yaml():
    """The golden tiny RQ-VAE (tests/golden/README.md) as an official config.yaml."""
    y = stage1_yaml(64, [8], "imagenet", ch=32, z=32, embed=32, ch_mult=(1, 2, 2, 4), res=64, num_res_blocks=1)
    y["arch"]["hparams"]["restart_unused_codes"] = False
    return y


@pytest.fixture(scope="module")
def golden_converted(golden, tmp_path_factory):
    """The golden parameters written as official checkpoint folders and converted by the CLI.

    The stage-2 yaml's `vqvae` path is stale (as in the released tarballs): the stage-1 folder is found beside.
    """
    root = tmp_path_factory.mktemp("golden")
    sd1 = {k[len("vae/param/"):]: v for k, v in golden.items() if k.startswith("vae/param/")}
    sd2 = {k[len("tf/param/"):]: v for k, v in golden.items() if k.startswith("tf/param/")}
    write_official(root / "src" / "stage1", sd1, tiny_stage1_yaml())
    write_official(root / "src" / "stage2", sd2, stage2_yaml(64, 2, 1, 4, 64, 10, 1, "imagenet", input_embed=32,
                                                             vqvae="/cluster/experiments/tiny/stage1/model.pt"))
    main(["official", "--ckpt", str(root / "src" / "stage2"), "--out", str(root / "out")])
    return dict(root=root, out=root / "out", sd1=sd1, sd2=sd2)


@needs_torch
def test_golden_parity_through_the_cli(golden_converted, golden):
    from rq_jax.runs import load_rq_transformer, load_rqvae

    out = golden_converted["out"]
    vae, _, _ = load_rqvae(str(out / "stage1"))
    tf, config2, _ = load_rq_transformer(str(out / "stage2"))
    assert config2.rqvae_workdir == str(out / "stage1")

    @nnx.jit
    def vae_forward(m, x):
        recon = m(x).recon
        return m.encode(x), recon

    x = jnp.asarray(np.transpose(golden["vae/x"], (0, 2, 3, 1)))
    codes, recon = jax.device_get(vae_forward(vae, x))
    np.testing.assert_array_equal(codes, golden["vae/codes"])
    np.testing.assert_allclose(np.transpose(recon, (0, 3, 1, 2)), golden["vae/recon"], atol=1e-4, rtol=0)

    logits = nnx.jit(lambda m, c, y, cb: m(c, y, codebook_KxC=cb))(
        tf, jnp.asarray(golden["tf/codes"]), jnp.asarray(golden["tf/cond"]), vae.codebook_state.embedding_KxC)
    np.testing.assert_allclose(np.asarray(logits), golden["tf/logits"], atol=1e-4, rtol=0)

    report = (out / "conversion_report.txt").read_text()
    assert "source of stage 1: " + str(golden_converted["root"] / "src" / "stage1" / "model.pt") in report
    assert "summary rqvae: 217 tensors converted, 9 codebook aliases, 0 ignored" in report
    assert f"summary rq_transformer: {len(golden_converted['sd2'])} tensors converted" in report
    config = json.loads((out / "stage2" / "config.json").read_text())
    assert config["stage"] == "rq_transformer" and config["model"]["num_classes"] == 10


@needs_torch
@pytest.mark.slow
def test_sampling_reads_the_converted_text_model(shrunk_cc3m, tmp_path):
    """`python -m rq_jax.sample` runs on the converted CC-3M dirs: stage 1 and the tokenizer are found."""
    from rq_jax import sample

    out = sample.run(sample_args(shrunk_cc3m["out"] / "stage2", tmp_path / "s.png", prompt=["a red cat"]))
    assert out["images"].shape == (1, 256, 256, 3) and out["codes"].shape == (1, 8, 8, 4)
    assert (out["codes"] < 64).all()


def sample_args(workdir, png, prompt=()):
    from rq_jax.sample import build_parser

    args = ["--workdir", str(workdir), "--num", "1", "--top_k", "8", "--out", str(png)]
    return build_parser().parse_args(args + [a for p in prompt for a in ("--prompt", p)])


# ---- (e) errors --------------------------------------------------------------------------------------------
@needs_torch
def test_shape_mismatch_names_the_tensor(golden_converted, tmp_path):
    sd2 = dict(golden_converted["sd2"])
    name = "body_transformer.blocks.1.mlp.2.weight"
    sd2[name] = np.zeros((64, 128), np.float32)  # official (d_model, 4 d_model) = (64, 256)
    src = golden_converted["root"] / "src"
    write_official(tmp_path / "stage2", sd2, stage2_yaml(64, 2, 1, 4, 64, 10, 1, "imagenet", input_embed=32))
    args = ["official", "--ckpt", str(tmp_path / "stage2"), "--stage1", str(src / "stage1"), "--out",
            str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=re.escape(f"{name}: official shape (64, 128)")) as e:
        main(args)
    assert "(256, 64)" in str(e.value) and "fc2/kernel" in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing is written before everything is checked


@needs_torch
def test_yaml_disagreeing_with_the_tensors_names_both(golden_converted, tmp_path):
    src = golden_converted["root"] / "src"
    write_official(tmp_path / "stage2", golden_converted["sd2"],
                   stage2_yaml(64, 3, 1, 4, 64, 10, 1, "imagenet", input_embed=32))
    with pytest.raises(ValueError, match=r"arch\.body\.n_layer = 3 .*body_transformer\.blocks\.\* gives "
                                         r"spatial_layers = 2"):
        convert_official(str(tmp_path / "stage2"), str(tmp_path / "out"), stage1=str(src / "stage1"))
    y = stage2_yaml(64, 2, 1, 4, 64, 10, 1, "imagenet", input_embed=32)
    y["arch"]["input_emb_vqvae"] = False
    write_official(tmp_path / "stage2b", golden_converted["sd2"], y)
    with pytest.raises(ValueError, match="arch.input_emb_vqvae = False is not supported"):
        convert_official(str(tmp_path / "stage2b"), str(tmp_path / "out"), stage1=str(src / "stage1"))
    y1 = tiny_stage1_yaml()
    y1["arch"]["ddconfig"]["ch"] = 64
    write_official(tmp_path / "stage1", golden_converted["sd1"], y1)
    with pytest.raises(ValueError, match=r"arch\.ddconfig\.ch = 64 .*encoder\.conv_in\.weight gives ch = 32"):
        convert_official(str(tmp_path / "stage1"), str(tmp_path / "out1"))


@needs_torch
def test_missing_inputs_give_one_clear_sentence(golden_converted, tmp_path):
    with pytest.raises(SystemExit, match="No official checkpoint at .*nowhere/model.pt: give the folder"):
        main(["official", "--ckpt", str(tmp_path / "nowhere" / "model.pt"), "--out", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="holds no .pt files"):
        convert_official(str(tmp_path), str(tmp_path / "out"))
    # a stage-2 checkpoint alone: its stage-1 RQ-VAE cannot be found
    write_official(tmp_path / "lonely" / "stage2", golden_converted["sd2"])
    with pytest.raises(FileNotFoundError, match="stage-1 RQ-VAE was not found .*pass --stage1"):
        convert_official(str(tmp_path / "lonely" / "stage2"), str(tmp_path / "out"))
    # the output already holds a converted run
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        convert_official(str(golden_converted["root"] / "src" / "stage2"), str(golden_converted["out"]))


class TrainingState:
    """A pickled Python object in a checkpoint: a safe torch.load refuses it."""


@needs_torch
def test_ema_weights_and_pickled_entries(golden_converted, tmp_path):
    import torch

    from rq_jax.runs import load_rqvae

    sd1 = golden_converted["sd1"]
    ema = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd1.items()}
    write_official(tmp_path / "stage1", {k: np.zeros_like(v) for k, v in sd1.items()}, tiny_stage1_yaml(),
                   extra={"state_dict_ema": ema, "scheduler": TrainingState()})
    with pytest.raises(ValueError, match="rerun with --allow_pickle"):
        convert_official(str(tmp_path / "stage1"), str(tmp_path / "out"), ema=True)
    with pytest.raises(ValueError, match="--stage1 is only for stage-2 checkpoints"):
        convert_official(str(tmp_path / "stage1"), str(tmp_path / "out"), stage1=str(tmp_path / "stage1"),
                                  allow_pickle=True)
    main(["official", "--ckpt", str(tmp_path / "stage1"), "--out", str(tmp_path / "out"), "--ema", "--allow_pickle"])
    vae, _, _ = load_rqvae(str(tmp_path / "out" / "stage1"))
    check_loaded_params(vae, sd1, vae_convert.official_name)
    assert not (tmp_path / "out" / "stage2").exists()
    report = (tmp_path / "out" / "conversion_report.txt").read_text()
    assert "top-level entry 'state_dict' " in report and "top-level entry 'scheduler' " in report


@needs_torch
def test_text_model_without_tokenizer_files(shrunk_cc3m, tmp_path):
    root = shrunk_cc3m["root"]
    message = "bpe-16k-vocab.json and bpe-16k-merges.txt, not found .*--tokenizer_dir"
    with pytest.raises(FileNotFoundError, match=message):
        convert_official(str(root / "cc3m" / "stage2"), str(tmp_path / "out"),
                                  stage1=str(root / "in256" / "stage1"))


def test_without_torch_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"needs PyTorch: install it with `pip install torch` "
                                         r"\(or `pip install -e \.\[convert\]`\)\."):
        main(["official", "--ckpt", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out")])
