"""A tiny random-initialised Llama and the byte-level BPE tokenizer shipped with dpokit.

Tests and ``dpokit quickstart --tiny`` run the real pipeline on these: a real HF model
folder and a real fast tokenizer with a ChatML chat template, built offline in a second.
"""

from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER_DIR = Path(__file__).parents[2] / "assets" / "tiny_tokenizer"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tiny_tokenizer(texts: list[str], vocab_size: int = 1024):
    """Train the byte-level BPE (used once, to write ``assets/tiny_tokenizer``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML
    return fast


def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


def tiny_model(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def write_tiny_model(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Save a tiny random model and the shipped tokenizer as a normal HF model folder."""
    folder = Path(folder)
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed=seed, hidden=hidden, layers=layers)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _write_shipped_tokenizer() -> None:
    """Rebuild ``assets/tiny_tokenizer`` from the shipped quickstart task text."""
    import json

    from dpokit.tasks.reviews import DEFAULT_DIR

    texts = []
    for line in (DEFAULT_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        texts += [m["content"] for key in ("prompt", "chosen", "rejected") for m in rec[key]]
    train_tiny_tokenizer(texts).save_pretrained(TOKENIZER_DIR)


if __name__ == "__main__":
    _write_shipped_tokenizer()
