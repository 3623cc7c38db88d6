"""Evidence for the ``diffusion`` policy: Diffusion-DPO on real 8×8 digits, through dpokit's loop.

1. A small caption-conditioned denoiser ("digit 3") is pretrained on scikit-learn's digits
   (1,797 real 8×8 scans that ship with scikit-learn) with the ordinary ε-prediction loss.
2. A judge: logistic regression on the digits; an image's score is its probability of the
   digit its caption asks for.
3. Pairs: two samples per (class, seed) from the pretrained model, judged; the better one is
   preferred, pairs the judge cannot tell apart (|Δ| < ``--tie-margin``) are ties, which
   ``data.ties=drop`` drops and the data line counts. Written as PNG files and a Pick-a-Pic-style
   JSONL, read back by the policy's own reader.
4. ``dpokit.train.train`` with ``--policy diffusion --loss diffusion_dpo --ref copy``.
5. Held-out sampling seeds (never used for pairs), the same starting noise for both models:
   the judge's win rate of tuned over reference with a bootstrap 95% CI, mean judge score and
   accuracy of each, and the drift: mean per-pixel distance between same-seed samples and the
   MMD² between the two models' sample sets (RBF kernel); a before/after PNG grid.

    python benchmarks/diffusion_digits.py --out runs/digits      # sizes are flags (--help)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16 * 2 - 1  # 0..16 -> [-1, 1]
    return images.unsqueeze(1), torch.tensor(data.target)


def words_for(classes, model) -> torch.Tensor:
    from dpokit.policies.diffusion import caption_ids

    s = model.settings
    ids = [caption_ids(f"digit {int(c)}", s["buckets"], s["max_words"]) for c in classes]
    return torch.tensor(ids)  # every caption has the same length


def pretrain(folder: Path, images, labels, steps: int, batch: int, lr: float, seed: int, log) -> None:
    """The base model: ε-prediction MSE at uniform t, the ordinary DDPM objective."""
    from dpokit.policies.diffusion import read_denoiser, write_denoiser
    from dpokit.store.atomic import atomic_folder

    write_denoiser(folder / "init", sample_size=8, channels=1, block_out_channels=(32, 64), buckets=64,
                   seed=seed)
    model = read_denoiser(str(folder / "init")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched, gen = model.scheduler, torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        ix = torch.randint(0, len(images), (batch,), generator=gen)
        x0, t = images[ix], torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = (model(sched.add_noise(x0, noise, t), t, words_for(labels[ix], model)) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 5) == 0:
            log(f"[pretrain] step {step}/{steps}: mse {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    with atomic_folder(folder / "base", "model") as tmp:
        model.eval().save_pretrained(tmp)


def sample(model, classes: list[int], per_class: int, seed: int, steps: int) -> torch.Tensor:
    """(len(classes), per_class, 1, 8, 8) samples; class c's noise is seeded by (seed, c)."""
    from dpokit.policies.diffusion import sample_images

    out = [sample_images(model, words_for([c] * per_class, model), seed * 1000 + c, steps) for c in classes]
    return torch.stack(out)


class Judge:
    """Logistic regression on the digits: p(requested digit | image)."""

    def __init__(self, images, labels, seed: int):
        from sklearn.linear_model import LogisticRegression

        x = images.flatten(1).numpy()
        self.model = LogisticRegression(max_iter=2000, C=0.5, random_state=seed).fit(x, labels.numpy())

    def score(self, images: torch.Tensor, digit: int) -> np.ndarray:
        return self.model.predict_proba(images.flatten(1).numpy())[:, digit]

    def accuracy(self, images: torch.Tensor, digit: int) -> np.ndarray:
        return self.model.predict(images.flatten(1).numpy()) == digit


def to_png(image: torch.Tensor, path: Path) -> str:
    from PIL import Image

    pixels = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path.name


def write_pairs(folder: Path, model, judge: Judge, per_class: int, seed: int, steps: int, tie_margin: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    samples = sample(model, list(range(10)), 2 * per_class, seed, steps)
    rng, lines, counts = random.Random(seed), [], {"pairs": 0, "ties": 0}
    for c in range(10):
        scores = judge.score(samples[c], c)
        for k in range(per_class):
            a, b = 2 * k, 2 * k + 1
            names = [to_png(samples[c, i], folder / f"{c}_{k}_{j}.png") for j, i in enumerate((a, b))]
            gap = scores[a] - scores[b]
            label = 0.5 if abs(gap) < tie_margin else (1 if gap > 0 else 0)
            lines.append(json.dumps({"caption": f"digit {c}", "jpg_0": names[0], "jpg_1": names[1], "label_0": label}))
            counts["pairs"] += 1
            counts["ties"] += label == 0.5
    rng.shuffle(lines)
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return counts


def mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² with an RBF kernel whose bandwidth is the median pairwise distance."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    z = torch.cat([x, y])
    d = torch.cdist(z, z).pow(2)
    k = torch.exp(-d / d[d > 0].median())
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
                 - 2 * kxy.mean())


def grid(ref: torch.Tensor, tuned: torch.Tensor, path: Path, columns: int = 8, scale: int = 4) -> None:
    """Rows: digits 0-9; left block the reference, right block the tuned model, the same seeds."""
    from PIL import Image

    cols = min(columns, ref.shape[1])
    cell, pitch, gap = 8 * scale, 8 * scale + scale, 4 * scale  # a thin line between tiles, a wide one between blocks
    canvas = Image.new("L", (2 * cols * pitch + gap, 10 * pitch), 96)
    for c in range(10):
        for j in range(cols):
            for block, imgs in enumerate((ref, tuned)):
                px = ((imgs[c, j, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
                tile = Image.fromarray(px).resize((cell, cell), Image.Resampling.NEAREST)
                canvas.paste(tile, (block * (cols * pitch + gap) + j * pitch, c * pitch))
    canvas.save(path)


def held_out_figures(base, tuned, judge, images, args) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The judge's win rate of the tuned model over the reference on held-out seeds, both models'
    scores and accuracies, and the drift between them (and from real digits); with the samples."""
    from dpokit.eval.evaluate import win_rate

    seed = args.seed + 1000  # held-out sampling seeds: none of them made a training pair
    ref_s = sample(base, list(range(10)), args.eval_per_class, seed, args.sample_steps)
    new_s = sample(tuned, list(range(10)), args.eval_per_class, seed, args.sample_steps)
    outcomes, ref_scores, new_scores, ref_acc, new_acc = [], [], [], [], []
    for c in range(10):
        r, n = judge.score(ref_s[c], c), judge.score(new_s[c], c)
        outcomes += [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(n, r)]
        ref_scores += r.tolist()
        new_scores += n.tolist()
        ref_acc += judge.accuracy(ref_s[c], c).tolist()
        new_acc += judge.accuracy(new_s[c], c).tolist()
    wr = win_rate(outcomes, args.seed)
    pixel = float(((new_s - ref_s).abs() / 2).mean())  # in [0, 1] units of the image's range
    real = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:500]]
    figures = {"win_rate_tuned_over_reference": wr["win_rate"], "win_rate_ci95": wr["win_rate_ci95"],
               "wins_ties_losses": [wr["wins"], wr["ties"], wr["losses"]],
               "judge_score_reference": float(np.mean(ref_scores)), "judge_score_tuned": float(np.mean(new_scores)),
               "judge_accuracy_reference": float(np.mean(ref_acc)), "judge_accuracy_tuned": float(np.mean(new_acc)),
               "drift_mean_pixel_distance": pixel,
               "drift_mmd2_tuned_vs_reference": mmd2(new_s.flatten(0, 1), ref_s.flatten(0, 1)),
               "mmd2_reference_vs_real_digits": mmd2(ref_s.flatten(0, 1), real),
               "mmd2_tuned_vs_real_digits": mmd2(new_s.flatten(0, 1), real)}
    return figures, ref_s, new_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/diffusion_digits")
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--pretrain-batch", type=int, default=64)
    ap.add_argument("--pairs-per-class", type=int, default=32)
    ap.add_argument("--sample-steps", type=int, default=25, help="DDPM sampling steps")
    ap.add_argument("--tie-margin", type=float, default=0.02)
    ap.add_argument("--dpo-steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--beta", type=float, default=2000.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-per-class", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; on a shared 2-core machine one was ten times faster than two")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dpokit.config import load_config
    from dpokit.policies.diffusion import read_denoiser
    from dpokit.train import train

    torch.manual_seed(args.seed)
    out, t0 = Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    images, labels = digits()
    judge = Judge(images, labels, args.seed)
    if not (out / "base" / "denoiser.json").is_file():
        pretrain(out, images, labels, args.pretrain_steps, args.pretrain_batch, 1e-3, args.seed, print)
    base = read_denoiser(str(out / "base"))
    t_pre = time.perf_counter() - t0
    counts = write_pairs(out / "pairs", base, judge, args.pairs_per_class, args.seed + 1, args.sample_steps,
                         args.tie_margin)
    t_pairs = time.perf_counter() - t0 - t_pre
    cfg = load_config(None, {"model.policy": "diffusion", "model.path": str(out / "base"),
                             "data.train": str(out / "pairs" / "pairs.jsonl"), "loss.name": "diffusion_dpo",
                             "loss.beta": args.beta, "train.lr": args.lr, "train.scheduler": "constant",
                             "train.batch_size": args.batch_size, "train.max_steps": args.dpo_steps,
                             "train.ref": "copy", "train.output": str(out / "dpo"), "train.progress": False,
                             "train.registry": "", "train.dtype": "fp32", "train.seed": args.seed,
                             "train.logging_steps": max(1, args.dpo_steps // 5)})
    result = train(cfg, log=print)
    t_dpo = time.perf_counter() - t0 - t_pre - t_pairs
    tuned = read_denoiser(str(result.final))
    figures, ref_s, new_s = held_out_figures(base, tuned, judge, images, args)
    report = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "args": vars(args),
              "pairs": counts, "dpo_final": result.last_metrics, **figures,
              "seconds": {"pretrain": round(t_pre), "pairs": round(t_pairs), "dpo": round(t_dpo),
                          "total": round(time.perf_counter() - t0)}}
    grid(ref_s, new_s, out / "before_after.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(f"grid: {out / 'before_after.png'} (left: reference, right: tuned, the same seeds)")


if __name__ == "__main__":
    main()
