"""dpokit: preference fine-tuning (DPO and its family) for Hugging Face causal LMs."""

import os

# No hub at run time: models and tokenizers come from local folders or GGUF files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
