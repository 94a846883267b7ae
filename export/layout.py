"""Names in an exported model directory (docs/interfaces.md). Import-light: no torch, so that checking whether a
directory is already exported costs milliseconds."""

from __future__ import annotations

MANIFEST_FILE = "manifest.json"
EXPORT_INFO_FILE = "export_info.json"  # provenance; not part of the contract
TEXT_ENCODER_FILE = "text_encoder.onnx"
UNET_FILE = "unet.onnx"
VAE_DECODER_FILE = "vae_decoder.onnx"
TOKENIZER_FILE = "tokenizer/tokenizer.json"
MANIFEST_FILES = {"text_encoder": TEXT_ENCODER_FILE, "unet": UNET_FILE, "vae_decoder": VAE_DECODER_FILE,
                  "tokenizer": TOKENIZER_FILE}

# The VAE decoder in sequential stages (manifest key "vae_stages"): every stage graph maps VAE_STAGE_INPUT to
# VAE_STAGE_OUTPUT; stage 0 takes the raw latent, the last one returns the image.
VAE_STAGE_INPUT = "hidden"
VAE_STAGE_OUTPUT = "hidden_out"


def vae_stage_file(stage: int) -> str:
    return f"vae_stage_{stage}.onnx"


# The torch modules themselves (diffusers/transformers `save_pretrained` layout, float32 safetensors), for the
# torch serving fallback (model_repository/torch_models.py): module name -> directory.
TORCH_MODULE_DIRS = {"unet": "torch/unet", "vae": "torch/vae", "text_encoder": "torch/text_encoder"}

# Bumped whenever an export gains or changes files: directories written by an older format are re-exported.
# 2: the VAE decoder's stages (vae_stage_<k>.onnx, manifest "vae_stages").
# 3: the torch modules (TORCH_MODULE_DIRS).
EXPORT_FORMAT_VERSION = 3

TEXT_MAX_LENGTH = 77  # CLIP context: token ids are always padded/truncated to this
