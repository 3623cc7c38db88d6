"""dpokit: preference fine-tuning (DPO and its family) for Hugging Face causal LMs."""

import os

# No hub at run time: models and tokenizers come from local folders or GGUF files. Set before
# huggingface_hub is imported, which reads these once. DPOKIT_ALLOW_HUB=1 opts in to downloads.
if os.environ.get("DPOKIT_ALLOW_HUB") == "1":
    os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")  # never ask the hub to convert pickles
else:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

__version__ = "0.1.0"
