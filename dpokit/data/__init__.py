"""Data: files -> typed records -> token ids. Knows tokenizers, not models."""

from dpokit.data.readers import (iter_json_objects, iter_records, iter_rows, parse_list, parse_pair, parse_sft,
                                 parse_unpaired, read_records)
from dpokit.data.records import KINDS, Pair, RankedList, Record, SFTExample, Unpaired
from dpokit.data.report import DataReport

_TOKENIZE = ("TokenizedRecord", "TokenizeReport", "collate", "encode", "encode_prompt", "tokenize_records")


def __getattr__(name: str):
    # tokenization needs torch; loaded on first use, so that the configs (which read the format
    # registry) and the command line's parser stay light
    if name in _TOKENIZE:
        from dpokit.data import tokenize

        return getattr(tokenize, name)
    raise AttributeError(f"module 'dpokit.data' has no attribute {name!r}")


__all__ = ["KINDS", "Pair", "RankedList", "Record", "SFTExample", "Unpaired", "DataReport", *_TOKENIZE,
           "iter_json_objects", "iter_records", "iter_rows", "parse_list", "parse_pair", "parse_sft",
           "parse_unpaired", "read_records"]
