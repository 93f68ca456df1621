"""`python -m rq_jax.convert official`: official PyTorch checkpoints -> rq_jax run directories.

  (a) every released state dict (tests/golden/official_state_dicts) maps at full size: zero-stride stand-ins with
      the real names and shapes, yaml synthesised from the official configs' values, a shape-only pass;
  (b) numeric round trips through files and the CLI: shrunk copies of the released CC-3M (text, yaml, tokenizer)
      and FFHQ (no yaml) checkpoints, random values -> model.pt -> CLI -> loaders -> arrays in Flax layouts;
  (c) the golden tiny official model through the CLI reproduces the official outputs;
  (d) PyTorch reference layers -> the converter's layout functions -> rq_jax layers give the same outputs;
  (e) errors: shape mismatches, yaml disagreements, missing files, no torch.
"""

import ast
import importlib.util
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
from rq_jax.convert.official_rqvae_config import stage1_config_from_official
from rq_jax.convert.official_run import convert_official
from rq_jax.convert.official_transformer_config import stage2_config_from_official
from rq_jax.convert.official_weights import convert_stage1, convert_stage2, layout_from_official
from rq_jax.convert.official_yaml import STAGE1, STAGE2

HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("yaml") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="the official converter needs torch and pyyaml")

DATA = pathlib.Path(__file__).parents[1] / "golden"
STATE_DICTS = DATA / "official_state_dicts"

# The official configs' values (kakaobrain/rq-vae-transformer configs/*.yaml) for every released state dict.
STAGE1_RELEASED = {  # file stem: (n_embed, attn_resolutions, dataset.type)
    "stage1_imagenet_rqvae_8x8x4": (16384, [8], "imagenet"),
    "stage1_ffhq_rqvae_8x8x4": (2048, [16], "ffhq"),
}
# file stem: (stage-1 stem, embed_dim, body/head n_layer, n_head, vocab, vocab/block_size_cond, dataset)
STAGE2_RELEASED = {
    "ffhq256-rqtransformer-8x8x4-350M": ("stage1_ffhq_rqvae_8x8x4", 1024, 24, 4, 16, 2048, 1, 1, "ffhq"),
    "lsun-church256-sqgan-8x8x4-350M-simp": ("stage1_imagenet_rqvae_8x8x4", 1024, 24, 4, 16, 16384, 1, 1,
                                             "LSUN-church"),
    "cat256-rqtransformer-8x8x4-600M": ("stage1_imagenet_rqvae_8x8x4", 1280, 26, 4, 20, 16384, 1, 1, "LSUN-cat"),
    "bedroom256-rqtransformer-8x8x4-600M": ("stage1_imagenet_rqvae_8x8x4", 1280, 26, 4, 20, 16384, 1, 1,
                                            "LSUN-bedroom"),
    "in256-rqtransformer-8x8x4-480M": ("stage1_imagenet_rqvae_8x8x4", 1536, 12, 4, 24, 16384, 1000, 1, "imagenet"),
    "in256-rqtransformer-8x8x4-800M": ("stage1_imagenet_rqvae_8x8x4", 1536, 24, 4, 24, 16384, 1000, 1, "imagenet"),
    "in256-rqtransformer-8x8x4-1400M": ("stage1_imagenet_rqvae_8x8x4", 1536, 42, 6, 24, 16384, 1000, 1, "imagenet"),
    "in256-rqtransformer-8x8x4-3800M": ("stage1_imagenet_rqvae_8x8x4", 2560, 42, 6, 40, 16384, 1000, 1, "imagenet"),
    "cc3m-rqtransformer-8x8x4-650M": ("stage1_imagenet_rqvae_8x8x4", 1280, 26, 4, 20, 16384, 16384, 32, "cc3m"),
}


# ---- helpers: shapes, synthetic official files -------------------------------------------------------------
def read_shapes(stem: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (STATE_DICTS / f"{stem}.txt").read_text().splitlines():
        if line.strip():
            name, shape, *_ = line.split("\t")
            shapes[name] = tuple(ast.literal_eval(shape))
    return shapes


def zero_stride(shapes):
    """Stand-ins with the real shapes that take no memory (every element is the same float32 zero)."""
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}


def shrink(shapes, dims, keep_blocks=None):
    """The same names with every dimension mapped through `dims` and only the first transformer blocks kept."""
    out = {}
    for name, shape in shapes.items():
        m = re.match(r"^(body|head)_transformer\.blocks\.(\d+)\.", name)
        if m and keep_blocks and int(m.group(2)) >= keep_blocks[m.group(1)]:
            continue
        out[name] = tuple(dims.get(s, s) for s in shape)
    return out


def random_state_dict(shapes, seed):
    """Random float32 values; the shared codebook's aliases are one tensor whose last (padding) row is zero."""
    rng = np.random.default_rng(seed)
    sd = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    if "quantizer.codebooks.0.weight" in sd:
        sd["quantizer.codebooks.0.weight"][-1] = 0.0
        sd["quantizer.codebooks.0.cluster_size_ema"] = np.abs(sd["quantizer.codebooks.0.cluster_size_ema"])
        for name in sd:
            m = re.match(r"^quantizer\.codebooks\.(\d+)\.(.*)$", name)
            if m and m.group(1) != "0":
                sd[name] = sd[f"quantizer.codebooks.0.{m.group(2)}"]
    return sd


def stage1_yaml(n_embed, attn, dataset, *, ch=128, z=256, embed=256, ch_mult=(1, 1, 2, 2, 4, 4), res=256,
                num_res_blocks=2):
    """An official stage-1 config.yaml (the schema of configs/*/stage1/*.yaml)."""
    f = 2 ** (len(ch_mult) - 1)
    return {
        "dataset": {"type": dataset, "transforms": {"type": f"{dataset}256x256"}},
        "arch": {
            "type": "rq-vae", "code_hier": 1,
            "hparams": {"bottleneck_type": "rq", "embed_dim": embed, "n_embed": n_embed,
                        "latent_shape": [res // f, res // f, embed], "code_shape": [res // f, res // f, 4],
                        "shared_codebook": True, "decay": 0.99, "restart_unused_codes": True, "loss_type": "mse",
                        "latent_loss_weight": 0.25},
            "ddconfig": {"double_z": False, "z_channels": z, "resolution": res, "in_channels": 3, "out_ch": 3,
                         "ch": ch, "ch_mult": list(ch_mult), "num_res_blocks": num_res_blocks,
                         "attn_resolutions": list(attn), "dropout": 0.0},
            "checkpointing": True,
        },
        "optimizer": {"type": "adam", "init_lr": 4.0e-5, "weight_decay": 0.0, "betas": [0.5, 0.9],
                      "warmup": {"epoch": 0.5, "multiplier": 1, "buffer_epoch": 0, "min_lr": 4.0e-5, "mode": "fix"}},
        "experiment": {"batch_size": 32, "epochs": 10, "save_ckpt_freq": 5, "test_freq": 1},
        "gan": {"disc": {"arch": {"in_channels": 3, "num_layers": 2, "use_actnorm": False, "ndf": 64,
                                  "spectral_norm": False}},
                "loss": {"disc_loss": "hinge", "gen_loss": "vanilla", "disc_weight": 0.75, "perceptual_weight": 1.0,
                         "disc_start": 0}},
    }


def stage2_yaml(d_model, body, head, heads, vocab, cond_vocab, cond_len, dataset, *, input_embed=256,
                block_size=(8, 8, 4), vqvae=None):
    """An official stage-2 config.yaml (the schema of configs/*/stage2/*.yaml and configs/cc3m/*.yaml)."""
    y = {
        "dataset": {"type": dataset, "vocab_size": vocab},
        "arch": {
            "type": "rq-transformer", "block_size": list(block_size), "embed_dim": d_model,
            "input_embed_dim": input_embed, "shared_tok_emb": True, "shared_cls_emb": True, "input_emb_vqvae": True,
            "head_emb_vqvae": True, "cumsum_depth_ctx": True, "vocab_size_cond": cond_vocab,
            "block_size_cond": cond_len, "body": {"n_layer": body, "block": {"n_head": heads}},
            "head": {"n_layer": head, "block": {"n_head": heads}},
        },
        "loss": {"type": "soft_target_cross_entropy", "stochastic_codes": True, "temp": 0.5},
        "optimizer": {"type": "adamW", "init_lr": 0.0005, "weight_decay": 0.0001, "betas": [0.9, 0.95],
                      "max_gn": 1.0},
        "experiment": {"amp": True, "batch_size": 32, "total_batch_size": 2048, "epochs": 100,
                       "sample": {"top_k": 250, "top_p": 1.0}},
    }
    if cond_len > 1:  # configs/cc3m: the dataset section names the tokenizer and the text length
        y["dataset"] = {"dataset": dataset, "txt_tok_name": "bpe16k_huggingface", "vocab_size_txt": cond_vocab,
                        "vocab_size": vocab, "image_resolution": 256, "context_length": cond_len}
    if vqvae:
        y["vqvae"] = {"ckpt": vqvae}
    return y


def write_official(folder: pathlib.Path, state_dict, yaml_cfg=None, *, wrap=True, extra=None):
    """An official checkpoint folder: model.pt ({"state_dict": ...} or the bare state dict) and config.yaml."""
    import torch
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    torch.save({"epoch": 10, "state_dict": tensors, **(extra or {})} if wrap else tensors, folder / "model.pt")
    if yaml_cfg is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(yaml_cfg))
    return folder / "model.pt"


def expected_flax_layout(name: str, array: np.ndarray) -> np.ndarray:
    """The rq_jax layout of an official tensor, written out independently of the converter."""
    if array.ndim == 4:  # conv (out, in, kh, kw) -> (kh, kw, in, out)
        return array.transpose(2, 3, 1, 0)
    if name.startswith("pos_emb"):  # (1, L, C) -> (L, C)
        return array[0]
    if array.ndim == 2 and name.endswith(".weight") and not name.startswith("cond_emb."):  # Linear (out, in)
        return array.T
    return array


def check_loaded_params(model, state_dict, name_of, skip=()):
    """Every model parameter equals its source tensor in the rq_jax layout; returns the source names used."""
    used = set()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = name_of(path)
        np.testing.assert_array_equal(np.asarray(var.get_value()), expected_flax_layout(name, state_dict[name]),
                                      err_msg=name)
        used.add(name)
    return used


# ---- (a) every released state dict at full size, shape-only -----------------------------------------------
def test_tables_cover_every_released_file():
    stems = {p.stem for p in STATE_DICTS.glob("*.txt")}
    assert stems == set(STAGE1_RELEASED) | set(STAGE2_RELEASED)


@needs_torch
@pytest.mark.parametrize("stem", sorted(STAGE1_RELEASED))
def test_released_stage1_maps_at_full_size(stem):
    n_embed, attn, dataset = STAGE1_RELEASED[stem]
    shapes = read_shapes(stem)
    config, notes = stage1_config_from_official(shapes, stage1_yaml(n_embed, attn, dataset), stem)
    assert notes == []
    m = config.model
    assert (m.resolution, m.ch, tuple(m.ch_mult), m.num_res_blocks, tuple(m.attn_resolutions)) == \
        (256, 128, (1, 1, 2, 2, 4, 4), 2, tuple(attn))
    assert (m.codebook_size, m.embed_dim, m.z_channels, tuple(m.code_shape)) == (n_embed, 256, 256, (8, 8, 4))
    assert config.loss.recon == "l2" and config.model.quantizer.restart and config.train.b1 == 0.5
    inferred, notes = stage1_config_from_official(shapes, None, stem)
    assert "no config.yaml" in notes[0]
    for key in ("resolution", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "embed_dim",
                "codebook_size", "code_shape"):
        assert tuple(np.atleast_1d(inferred.model[key])) == tuple(np.atleast_1d(m[key])), key

    converted = convert_stage1(zero_stride(shapes), config)
    gen = dict(nnx.to_flat_state(converted.state["gen"]))
    assert len(gen) + 12 == len(shapes)  # + weight, cluster_size_ema, embed_ema of 4 aliased codebooks
    for path, var in gen.items():
        name = vae_convert.official_name(path)
        want = expected_flax_layout(name, np.broadcast_to(np.uint8(0), shapes[name])).shape
        assert var.get_value().shape == want, name
    (cb,) = (v.get_value() for _, v in nnx.to_flat_state(converted.state["codebook"]))
    assert cb.embedding_KxC.shape == (n_embed, 256) and cb.cluster_size_K.shape == (n_embed,)
    # the report accounts for every source tensor exactly once
    reported = [line.split()[1] for line in converted.report]
    assert sorted(reported) == sorted(shapes)
    assert sum("alias of" in line for line in converted.report) == 9
    assert any("zero padding row dropped" in line for line in converted.report)


@needs_torch
@pytest.mark.parametrize("stem", sorted(STAGE2_RELEASED))
def test_released_stage2_maps_at_full_size(stem):
    stage1, d_model, body, head, heads, vocab, cond_vocab, cond_len, dataset = STAGE2_RELEASED[stem]
    n_embed, attn, dataset1 = STAGE1_RELEASED[stage1]
    config1, _ = stage1_config_from_official(read_shapes(stage1), stage1_yaml(n_embed, attn, dataset1))
    shapes = read_shapes(stem)
    yaml_cfg = stage2_yaml(d_model, body, head, heads, vocab, cond_vocab, cond_len, dataset)
    config, notes = stage2_config_from_official(shapes, yaml_cfg, config1, stem)
    m = config.model
    assert notes == [] and m.cfg_null is False
    assert (m.d_model, m.num_heads, m.spatial_layers, m.depth_layers, m.mlp_ratio) == (d_model, heads, body, head, 4)
    assert (m.vocab_size, m.embed_dim, tuple(m.code_shape)) == (vocab, 256, (8, 8, 4))
    if cond_len > 1:
        assert (m.cond, m.text_len, m.text_vocab_size) == ("text", 32, 16384)
    elif cond_vocab > 1:
        assert (m.cond, m.num_classes) == ("class", 1000)
    else:
        assert m.cond == "none"
    assert (config.soft.temperature, config.train.batch_size, config.sample.top_k) == (0.5, 2048, 250)
    inferred, notes = stage2_config_from_official(shapes, None, config1, stem)
    assert "no config.yaml" in notes[0]
    assert {k: v for k, v in inferred.model.items() if "dropout" not in k} == \
        {k: v for k, v in m.items() if "dropout" not in k}

    converted = convert_stage2(zero_stride(shapes), config)
    params = nnx.to_flat_state(converted.state["params"])
    assert len(params) == len(shapes)
    src_size = dst_size = 0
    for path, var in params:
        name = tf_convert.official_name(path)
        want = expected_flax_layout(name, np.broadcast_to(np.uint8(0), shapes[name])).shape
        assert var.get_value().shape == want, name
        src_size += int(np.prod(shapes[name]))
        dst_size += int(np.prod(want))
    assert src_size == dst_size
    assert sorted(line.split()[1] for line in converted.report) == sorted(shapes)
    assert any(path[0] == "cond_classifier" for path, _ in params) == (cond_len > 1)


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


# ---- (d) PyTorch reference layers -> layout functions -> rq_jax layers -------------------------------------
def _torch_layers():
    import torch

    class AttnBlock(torch.nn.Module):
        """The VQGAN/RQ-VAE attention block: GroupNorm, 1x1 q/k/v, single-head softmax attention, 1x1 proj_out."""

        def __init__(self, c):
            super().__init__()
            self.norm = torch.nn.GroupNorm(32, c, eps=1e-6, affine=True)
            self.q, self.k, self.v, self.proj_out = (torch.nn.Conv2d(c, c, 1) for _ in range(4))

        def forward(self, x):
            h = self.norm(x)
            b, c, hh, ww = x.shape
            q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)
            k = self.k(h).reshape(b, c, hh * ww)
            w = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
            v = self.v(h).reshape(b, c, hh * ww)
            out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
            return x + self.proj_out(out)

    return torch, AttnBlock


def _load_into(flax_layer, torch_layer, stage, name_of):
    """The torch layer's state dict -> the converter's layout functions -> the Flax layer's parameters."""
    sd = {k: v.detach().numpy() for k, v in torch_layer.state_dict().items()}
    flat = []
    for path, _ in nnx.to_flat_state(nnx.state(flax_layer, nnx.Param)):
        flat.append((path, jnp.asarray(layout_from_official(stage, path, sd.pop(name_of(path))))))
    assert sd == {}, f"unused torch tensors {sorted(sd)}"
    nnx.update(flax_layer, nnx.from_flat_state(flat))


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@needs_torch
@pytest.mark.parametrize("kind", ["conv3x3", "conv1x1", "group_norm", "attn_block"])
def test_torch_vae_layers_match_after_layout_conversion(kind):
    from rq_jax.models import layers

    torch, AttnBlock = _torch_layers()
    torch.manual_seed(0)
    c = 64
    rngs = nnx.Rngs(0)
    if kind == "conv3x3":
        ref, ours = torch.nn.Conv2d(32, c, 3, padding=1), layers.conv(32, c, 3, padding=1, rngs=rngs)
    elif kind == "conv1x1":
        ref, ours = torch.nn.Conv2d(32, c, 1), layers.conv(32, c, 1, rngs=rngs)
    elif kind == "group_norm":
        ref, ours = torch.nn.GroupNorm(32, c, eps=1e-6), layers.group_norm(c, rngs=rngs)
        with torch.no_grad():
            ref.weight.normal_(), ref.bias.normal_()
    else:
        ref, ours = AttnBlock(c), layers.AttnBlock(c, rngs=rngs)
        with torch.no_grad():
            ref.norm.weight.normal_(), ref.norm.bias.normal_()
    _load_into(ours, ref, STAGE1, vae_convert.official_name)
    x_NCHW = _rand(2, 32 if kind.startswith("conv") else c, 8, 8)
    with torch.no_grad():
        want = ref(torch.from_numpy(x_NCHW)).numpy()
    got = np.asarray(ours(jnp.asarray(x_NCHW.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@needs_torch
@pytest.mark.parametrize("kind", ["linear", "layer_norm"])
def test_torch_transformer_layers_match_after_layout_conversion(kind):
    from rq_jax.models import transformer_layers as tl

    torch, _ = _torch_layers()
    torch.manual_seed(0)
    rngs = nnx.Rngs(0)
    if kind == "linear":
        ref, ours = torch.nn.Linear(48, 80), tl.linear(48, 80, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    else:
        ref, ours = torch.nn.LayerNorm(48), tl.layer_norm(48, param_dtype=jnp.float32, rngs=rngs)
        with torch.no_grad():
            ref.weight.normal_(), ref.bias.normal_()
    _load_into(ours, ref, STAGE2, tf_convert.official_name)
    x = _rand(3, 5, 48)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), want, atol=1e-5, rtol=1e-5)


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
