"""Pick-a-Pic-style image preference records for the ``diffusion`` policy.

A record is ``caption``, ``jpg_0`` and ``jpg_1`` (image bytes, as Pick-a-Pic's Parquet files hold
them, or a path relative to the data file) and ``label_0``: 1 when ``jpg_0`` is preferred, 0 when
``jpg_1`` is, 0.5 for a tie. Any file ``dpokit.data.sources.iter_rows`` reads works (JSONL,
Parquet...). Ties are dropped (counted in the summary line) or, with ``data.ties=keep``, kept
as tied pairs for the losses that train on ties; the report (``OUTPUT/data_report_<name>.json``,
as for text data) lists every dropped tie by row.

Images are decoded with PIL, converted to the model's channels, resized to its sample size and
kept as uint8; ``batch`` maps them to [−1, 1]. For a Stable Diffusion-style folder
(``pipeline``) the images are then encoded to VAE latents and the captions to text-encoder states
before caching, so the cache holds what the UNet reads. The decoded (or encoded) records are cached on disk under a
key that hashes the data file, every image file it names, the path and the settings that change
the output (dpokit.data.cache does the same for tokenized text).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from dpokit.data.cache import data_hash
from dpokit.data.report import DataReport
from dpokit.data.sources import iter_rows
from dpokit.errors import UserError

CACHE_FORMAT = 2
LABELS = {1: (0, 1), 0: (1, 0), 0.5: (0, 1)}
"""label_0 -> (index of the preferred image, index of the other); a tie keeps the file's order."""


@dataclass
class ImagePair:
    images: torch.Tensor
    """(2, C, H, W) uint8, preferred first; for a pipeline folder (2, latent C, h, w) float latents."""
    words: list[int]
    """The caption's hashed word ids (``model.caption_ids``); for a pipeline folder its token ids."""
    source: str
    caption: str = ""
    context: torch.Tensor | None = None
    """A pipeline folder's text-encoder states of the caption (tokens, hidden); None for hashed words."""
    tie: bool = False
    weight: float = 1.0
    fixed_noise: bool = False
    """Held-out: the same timestep and noise at every evaluation (``DiffusionPolicy.batch``)."""

    responses = 2


@dataclass
class ImageOptions:
    sample_size: int
    channels: int
    buckets: int
    max_words: int
    ties: str
    encoder: str = ""
    """A pipeline folder's ``encoder_identity`` (its frozen parts, the latent mode); "" for pixel space."""


def read_pairs(path: str, opts: ImageOptions, cache_dir: Path | None, report_path: Path, log,
               encode=None) -> list[ImagePair]:
    """The records of ``path``, from the cache when the same data and settings were read before;
    the report (every dropped tie, by row) is written to ``report_path``. ``encode(pairs)``, when
    given, turns the decoded pairs into what is cached (a pipeline folder's latents and states)."""
    key = _key(path, opts) if cache_dir is not None else None
    if key is not None and (cache_dir / f"{key}.safetensors").is_file():
        pairs, summary = _load(cache_dir, key)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cache_dir / f"{key}.report.json", report_path)
        log(f"{summary} (cached)")
        return pairs
    report = DataReport(path)
    report.format, report.kind = "pick-a-pic", "image pairs"
    pairs = []
    for where, row in iter_rows(path):
        report.rows += 1
        pair = _pair(where, row, Path(path).parent, opts)
        if pair.tie and opts.ties == "drop":
            report.drop(where, "tie (label_0 = 0.5)")
            continue
        pairs.append(pair)
    report.records_out = len(pairs)
    ties = report.total("dropped")
    if not pairs:
        raise UserError(f"no usable records ({report.rows} read, {ties} ties dropped)", where=path)
    if encode is not None:
        encode(pairs)
    summary = (f"{len(pairs)} image pairs of {report.rows} records; {ties} ties dropped (label_0 = 0.5; "
               f"data.ties=keep trains on them with a tie loss); {sum(p.tie for p in pairs)} ties kept; "
               f"report: {report_path}")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(report_path)
    if key is not None:
        _save(cache_dir, key, pairs, summary, report_path)
    log(summary)
    return pairs


def _pair(where: str, row: dict, base: Path, opts: ImageOptions) -> ImagePair:
    from dpokit.policies.diffusion.model import caption_ids

    caption = row.get("caption")
    if not isinstance(caption, str):
        raise UserError("missing or not a string", where, "caption")
    label = row.get("label_0")
    if isinstance(label, bool) or label not in LABELS:
        raise UserError(f"must be 1 (jpg_0 preferred), 0 (jpg_1 preferred) or 0.5 (a tie); got {label!r}",
                        where, "label_0")
    images = [_image(row.get(f"jpg_{i}"), base, where, f"jpg_{i}", opts) for i in (0, 1)]
    first, second = LABELS[label]
    words = caption_ids(caption, opts.buckets, opts.max_words) if opts.buckets else []  # else: tokenized later
    return ImagePair(torch.stack([images[first], images[second]]), words, where, caption, tie=label == 0.5)


def _image(value, base: Path, where: str, field: str, opts: ImageOptions) -> torch.Tensor:
    """(C, H, W) uint8 of an image given as bytes or as a path relative to the data file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, dict) and "bytes" in value:  # how the datasets library stores an Image column
        value = value["bytes"]
    if isinstance(value, str):
        try:
            value = (base / value).read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read image file {base / value}: {exc.strerror}", where, field) from None
    if not isinstance(value, (bytes, bytearray)):
        raise UserError("must be image bytes or a path to an image file", where, field)
    try:
        img = Image.open(io.BytesIO(value))
        img = img.convert("L" if opts.channels == 1 else "RGB").resize((opts.sample_size, opts.sample_size),
                                                                       Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"not a decodable image ({exc.__class__.__name__})", where, field) from None
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(opts.sample_size, opts.sample_size, opts.channels).permute(2, 0, 1).contiguous()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [−1, 1]."""
    return images.float() / 127.5 - 1.0


def _key(path: str, opts: ImageOptions) -> str:
    """Hash of the data file, the image files it names, its path and the settings."""
    h = hashlib.sha256(f"v{CACHE_FORMAT}|{os.path.abspath(path)}|{json.dumps(opts.__dict__, sort_keys=True)}".encode())
    h.update(data_hash(Path(path)).encode())
    base = Path(path).parent
    for _, row in iter_rows(path):
        for field in ("jpg_0", "jpg_1"):
            value = row.get(field)
            if isinstance(value, str) and (base / value).is_file():
                h.update(data_hash(base / value).encode())
    return h.hexdigest()[:32]


def _save(folder: Path, key: str, pairs: list[ImagePair], summary: str, report: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report, folder / f"{key}.report.json")
    captions = sorted({p.caption for p in pairs if p.context is not None})  # one state tensor per caption
    meta = {"summary": summary, "captions": captions,
            "records": [[p.words, p.source, p.tie, p.caption] for p in pairs]}
    (folder / f"{key}.json").write_text(json.dumps(meta))
    tmp = folder / f".{key}.tmp{os.getpid()}"
    tensors = {"images": torch.stack([p.images for p in pairs]).contiguous()}  # a VAE's output may be strided
    if captions:
        first = {p.caption: p.context for p in reversed(pairs)}
        tensors["contexts"] = torch.stack([first[c] for c in captions]).contiguous()
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / f"{key}.safetensors")  # last: marks the entry complete


def _load(folder: Path, key: str) -> tuple[list[ImagePair], str]:
    from safetensors.torch import load_file

    meta = json.loads((folder / f"{key}.json").read_text())
    tensors = load_file(str(folder / f"{key}.safetensors"))
    row = {c: k for k, c in enumerate(meta["captions"])}
    contexts = tensors.get("contexts")
    pairs = [ImagePair(tensors["images"][i], words, source, caption, tie=tie,
                       context=contexts[row[caption]] if contexts is not None else None)
             for i, (words, source, tie, caption) in enumerate(meta["records"])]
    return pairs, meta["summary"]
