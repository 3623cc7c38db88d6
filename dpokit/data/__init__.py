"""Data: files -> typed records -> token ids. Knows tokenizers, not models."""

from dpokit.data.readers import iter_json_objects, parse_pair, parse_sft, read_records
from dpokit.data.records import Pair, SFTExample
from dpokit.data.tokenize import TokenizedRecord, TokenizeReport, collate, encode, encode_prompt, tokenize_records

__all__ = ["Pair", "SFTExample", "TokenizedRecord", "TokenizeReport", "collate", "encode", "encode_prompt",
           "iter_json_objects", "parse_pair", "parse_sft", "read_records", "tokenize_records"]
