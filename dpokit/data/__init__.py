"""Data: files -> typed records -> token ids. Knows tokenizers, not models."""

from dpokit.data.readers import (iter_json_objects, iter_records, iter_rows, parse_list, parse_pair, parse_sft,
                                 parse_unpaired, read_records)
from dpokit.data.records import KINDS, Pair, RankedList, Record, SFTExample, Unpaired
from dpokit.data.report import DataReport
from dpokit.data.tokenize import TokenizedRecord, TokenizeReport, collate, encode, encode_prompt, tokenize_records

__all__ = ["KINDS", "Pair", "RankedList", "Record", "SFTExample", "Unpaired", "DataReport", "TokenizedRecord",
           "TokenizeReport", "collate", "encode", "encode_prompt", "iter_json_objects", "iter_records", "iter_rows",
           "parse_list", "parse_pair", "parse_sft", "parse_unpaired", "read_records", "tokenize_records"]
