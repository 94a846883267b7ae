"""The export package: the exported `tiny` directory honours docs/interfaces.md, graphs are batch-invariant and
shape-dynamic, the tokenizer wraps BOS...EOS, re-exports are no-ops, checkpoints export like presets.

`tiny` is exported once per session (about 3 s); the whole file runs in about 15 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from export.clip_vocab import build_byte_level_tokenizer, build_clip_bpe_tokenizer, find_clip_vocab_gz
from export.components import build_components
from export.exporter import export_models
from export.onnx_export import move_into_place
from export.presets import PRESETS, SCHEDULER_CONFIG

SEED = 0
ASTRONAUT_PROMPT = "a photo of an astronaut riding a horse"
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
MANIFEST_KEYS = {"preset", "latent_channels", "vae_scale_factor", "size_multiple", "default_size", "max_size",
                 "text", "scheduler", "files", "vae_stages"}
GRAPH_IO = {  # file -> (input names, output names), docs/interfaces.md
    "text_encoder": (["input_ids"], ["last_hidden_state"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["noise_pred"]),
    "vae_decoder": (["latent"], ["image"]),
}


def session(tiny_dir: Path, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(tiny_dir / f"{graph}.onnx"), providers=["CPUExecutionProvider"])


def test_manifest_matches_contract(tiny_dir: Path, manifest: dict[str, Any]) -> None:
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["preset"] == "tiny"
    assert (manifest["latent_channels"], manifest["vae_scale_factor"], manifest["size_multiple"]) == (4, 2, 8)
    assert (manifest["default_size"], manifest["max_size"]) == (64, 256)
    assert manifest["scheduler"] == dict(SCHEDULER_CONFIG)
    assert manifest["files"] == {"text_encoder": "text_encoder.onnx", "unet": "unet.onnx",
                                 "vae_decoder": "vae_decoder.onnx", "tokenizer": "tokenizer/tokenizer.json"}
    assert all((tiny_dir / name).is_file() for name in manifest["files"].values())
    text = manifest["text"]
    assert set(text) == {"max_length", "hidden_size", "bos_id", "eos_id", "pad_id"}
    assert (text["max_length"], text["hidden_size"]) == (77, 32)
    tokenizer = Tokenizer.from_file(str(tiny_dir / manifest["files"]["tokenizer"]))
    assert text["bos_id"] == tokenizer.token_to_id("<|startoftext|>")
    assert text["eos_id"] == text["pad_id"] == tokenizer.token_to_id("<|endoftext|>")


def test_manifest_agrees_with_models(tiny_dir: Path, manifest: dict[str, Any]) -> None:
    components = build_components("tiny", SEED)
    assert components.unet.config.in_channels == manifest["latent_channels"]
    assert components.unet.config.cross_attention_dim == manifest["text"]["hidden_size"]
    assert components.text_encoder.config.vocab_size == components.tokenizer.vocab_size
    assert 2 ** (len(components.vae.config.block_out_channels) - 1) == manifest["vae_scale_factor"]
    text_out = session(tiny_dir, "text_encoder").get_outputs()[0]
    assert text_out.shape[1:] == [77, manifest["text"]["hidden_size"]]
    # the transformers view of the tokenizer (for diffusers golden runs) pads like the consumer must
    padded = components.transformers_tokenizer()("a photo", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[0] == manifest["text"]["bos_id"]
    assert padded[-1] == manifest["text"]["pad_id"]


@pytest.mark.parametrize("graph", sorted(GRAPH_IO))
def test_onnx_graphs_pass_checker_with_contract_names(tiny_dir: Path, graph: str) -> None:
    model = onnx.load(str(tiny_dir / f"{graph}.onnx"))
    onnx.checker.check_model(model)
    inputs, outputs = GRAPH_IO[graph]
    assert [i.name for i in model.graph.input] == inputs
    assert [o.name for o in model.graph.output] == outputs
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_unet_rows_of_a_batch_equal_rows_run_alone(tiny_dir: Path) -> None:
    unet = session(tiny_dir, "unet")
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((3, 4, 32, 24), dtype=np.float32)
    hidden = rng.standard_normal((3, 77, 32), dtype=np.float32)
    timestep = np.array([999.0, 480.5, 1.0], dtype=np.float32)  # three different steps, one fractional (Euler)
    (batched,) = unet.run(None, {"sample": sample, "timestep": timestep, "encoder_hidden_states": hidden})
    assert batched.shape == sample.shape
    for row in range(3):
        (alone,) = unet.run(None, {"sample": sample[row:row + 1], "timestep": timestep[row:row + 1],
                                   "encoder_hidden_states": hidden[row:row + 1]})
        assert np.array_equal(batched[row:row + 1], alone), f"row {row} differs from the same row run alone"
    assert not np.array_equal(batched[0], batched[1])  # the timestep is really per row


def test_vae_decoder_takes_non_square_latents(tiny_dir: Path, manifest: dict[str, Any]) -> None:
    scale = manifest["vae_scale_factor"]
    latent = np.random.default_rng(2).standard_normal((2, 4, 12, 20), dtype=np.float32)
    (image,) = session(tiny_dir, "vae_decoder").run(None, {"latent": latent})
    assert image.shape == (2, 3, 12 * scale, 20 * scale)
    assert np.isfinite(image).all()


def test_tokenizer_wraps_prompt_in_bos_eos(tiny_dir: Path, manifest: dict[str, Any]) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer" / "tokenizer.json"))
    ids = tokenizer.encode("An astronaut, riding a horse!").ids
    assert ids[0] == manifest["text"]["bos_id"] and ids[-1] == manifest["text"]["eos_id"]
    assert len(ids) > 3 and max(ids) <= manifest["text"]["eos_id"]
    padded = np.full((1, 77), manifest["text"]["pad_id"], dtype=np.int64)
    padded[0, : len(ids)] = ids
    (hidden,) = session(tiny_dir, "text_encoder").run(None, {"input_ids": padded})
    assert hidden.shape == (1, 77, manifest["text"]["hidden_size"])


def test_clip_bpe_gives_sd_ids() -> None:
    vocab_gz = find_clip_vocab_gz()
    if vocab_gz is None:
        pytest.skip("the open_clip_torch wheel could not be fetched; the byte-level fallback is in use")
    built = build_clip_bpe_tokenizer(vocab_gz)
    assert built.vocab_size == 49408 and (built.bos_id, built.eos_id, built.pad_id) == (49406, 49407, 49407)
    assert built.tokenizer.encode(ASTRONAUT_PROMPT).ids == ASTRONAUT_IDS


def test_byte_level_fallback_is_one_token_per_character() -> None:
    built = build_byte_level_tokenizer()
    assert built.vocab_size == 514 and (built.bos_id, built.eos_id, built.pad_id) == (512, 513, 513)
    ids = built.tokenizer.encode("a photo").ids
    assert ids[0] == 512 and ids[-1] == 513 and len(ids) == len("aphoto") + 2


def test_second_export_is_a_no_op(tiny_dir: Path) -> None:
    mtimes_ns = {p: p.stat().st_mtime_ns for p in tiny_dir.rglob("*") if p.is_file()}
    started_s = time.perf_counter()
    assert export_models("tiny", tiny_dir, seed=SEED, show_progress=False) == tiny_dir
    assert time.perf_counter() - started_s < 0.5
    assert {p: p.stat().st_mtime_ns for p in tiny_dir.rglob("*") if p.is_file()} == mtimes_ns


def _write_sd_layout_tokenizer(tokenizer_json: Path, target: Path) -> None:
    """vocab.json + merges.txt + tokenizer_config.json, as SD-1.x checkpoints ship them."""
    model = json.loads(tokenizer_json.read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    target.mkdir(parents=True)
    (target / "vocab.json").write_text(json.dumps(model["vocab"]))
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>"}
    (target / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **specials}))


def test_checkpoint_export_matches_preset_export(tiny_dir: Path, manifest: dict[str, Any],
                                                 tmp_path: Path) -> None:
    from diffusers import DDIMScheduler

    components = build_components("tiny", SEED)
    checkpoint = tmp_path / "tiny-checkpoint"
    components.unet.save_pretrained(checkpoint / "unet")
    components.vae.save_pretrained(checkpoint / "vae")
    components.text_encoder.save_pretrained(checkpoint / "text_encoder")
    DDIMScheduler(**components.scheduler_config, clip_sample=False).save_pretrained(checkpoint / "scheduler")
    _write_sd_layout_tokenizer(tiny_dir / "tokenizer" / "tokenizer.json", checkpoint / "tokenizer")

    out = export_models(checkpoint, tmp_path / "out", show_progress=False)

    exported = json.loads((out / "manifest.json").read_text())
    assert exported["preset"] == "checkpoint:tiny-checkpoint"
    assert exported["default_size"] == 64 and exported["max_size"] == 128  # sample_size 32 x scale 2, doubled
    for key in ("latent_channels", "vae_scale_factor", "size_multiple", "text", "scheduler", "files", "vae_stages"):
        assert exported[key] == manifest[key], key
    latent = np.random.default_rng(3).standard_normal((1, 4, 16, 16), dtype=np.float32)
    (from_checkpoint,) = session(out, "vae_decoder").run(None, {"latent": latent})
    (from_preset,) = session(tiny_dir, "vae_decoder").run(None, {"latent": latent})
    np.testing.assert_allclose(from_checkpoint, from_preset, atol=1e-5)


def test_per_weight_files_are_gathered_into_one_data_file(tmp_path: Path) -> None:
    """Graphs over 2 GB (sd15's UNet) come out of the exporter as one file per weight; simulated here."""
    weights = [onnx.numpy_helper.from_array(np.full((64, 64), k, dtype=np.float32), f"w{k}") for k in (1, 2)]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w1"], ["h"]), onnx.helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "two_matmuls", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], initializer=weights)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    onnx.save_model(model, str(scratch / "unet.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(scratch.iterdir())) == 3

    move_into_place(scratch / "unet.onnx", tmp_path / "unet.onnx")

    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["unet.onnx", "unet.onnx.data"]
    # as readable as the graph (onnx creates data files owner-only)
    assert (tmp_path / "unet.onnx.data").stat().st_mode == (tmp_path / "unet.onnx").stat().st_mode
    shutil.rmtree(scratch)
    (y,) = session(tmp_path, "unet").run(None, {"x": np.ones((1, 64), np.float32)})
    assert np.all(y == 64 * 64 * 2)


def test_unknown_source_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a preset"):
        export_models("no-such-preset", tmp_path)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_consistent_models(preset: str) -> None:
    """Built on the meta device (no weights allocated), so even sd15 takes a fraction of a second."""
    with torch.device("meta"):
        components = build_components(preset, SEED, tokenizer_kind="byte-level")
    assert components.default_size % components.size_multiple == 0
    assert components.max_size % components.size_multiple == 0
    if preset == "sd15":  # SD-1.5 parameter counts
        counts = [sum(p.numel() for p in m.parameters())
                  for m in (components.unet, components.vae, components.text_encoder)]
        assert counts[0] == 859_520_964 and counts[1] == 83_653_863
