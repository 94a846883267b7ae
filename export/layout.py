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

TEXT_MAX_LENGTH = 77  # CLIP context: token ids are always padded/truncated to this
