"""Judge accuracy of a digits diffusion model's samples against its training time (docs/generation.md).

Trains `unlearning.generation.train.TrainConfig` (defaults unless overridden by flags) and, every ``--every``
steps, samples ``--per-class`` images of every class from the EMA model (DDIM, guidance 2.0) and records the
share that the judge (`unlearning.generation.judge`) labels as the class asked for, plus, for comparison, the
share an RBF SVC trained on the clean digits gets, and the judge's share with x̂0 clipped by the sampler.
Writes ``curve.json``, ``curve.md``, ``curve.png`` and the
final ``samples.png`` to ``--out``; with ``--final``, scores the cached model of the config instead (1,000
samples: accuracy, judge-space FID, sampling time; ``final.json``, ``final.md``, ``final_samples.png``); with
``--ablate``, the judge accuracy of the cached model under other sampler settings (``samplers.md``).
Reproduce the tables of docs/generation.md with:

    OMP_NUM_THREADS=1 .venv/bin/python docs/generation/quality_curve.py --out docs/generation
    OMP_NUM_THREADS=1 .venv/bin/python docs/generation/quality_curve.py --out docs/generation --final
    OMP_NUM_THREADS=1 .venv/bin/python docs/generation/quality_curve.py --out docs/generation --ablate
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import time
from pathlib import Path

import torch
from sklearn.svm import SVC

from unlearning import datasets
from unlearning.generation.diffusion import sample
from unlearning.generation.grid import save_grid
from unlearning.generation.judge import load_or_train_judge
from unlearning.generation.metrics import evaluate_generation, fid
from unlearning.generation.model import UNetConfig, build_unet
from unlearning.generation.train import TrainConfig, load_or_train, train
from unlearning.io import write_json, write_text
from unlearning.report import pyplot, save_figure


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/generation")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides key=value (python literal)")
    p.add_argument("--unet", nargs="*", default=[], help="UNetConfig overrides key=value (python literal)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--clip-only",
        action="store_true",
        help="sample the curve with x̂0 clipped only (the sampler's default before 2026-12-04: the curve of "
        "docs/generation.md)",
    )
    p.add_argument("--final", action="store_true", help="score the cached model of the config (no curve)")
    p.add_argument("--ablate", action="store_true", help="sampler settings on the cached model (no curve)")
    p.add_argument("--weights", default=None, help="with --ablate: a state_dict .pt of the config's UNet")
    p.add_argument("--replot", action="store_true", help="rewrite curve.md/curve.png from OUT/curve.json")
    return p.parse_args()


def overrides(pairs: list[str]) -> dict:
    return {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in pairs)}


def main() -> None:
    a = parse()
    if a.replot:
        return write(Path(a.out), json.loads((Path(a.out) / "curve.json").read_text()), None)
    torch.set_num_threads(a.threads)
    over = overrides(a.set) | ({"steps": a.steps} if a.steps else {})
    config = dataclasses.replace(
        TrainConfig(), unet=dataclasses.replace(UNetConfig(), **overrides(a.unet)), **over
    )
    ds = datasets.load("digits")
    judge = load_or_train_judge(ds).model
    if a.final:
        return final(ds, config, judge, a)
    if a.ablate:
        return ablate(ds, config, judge, a)
    svc = SVC(kernel="rbf").fit(ds.train.x.flatten(1).numpy(), ds.train.y.numpy())
    labels = torch.arange(10).repeat_interleave(a.per_class)
    n_params = sum(p.numel() for p in build_unet(config.unet).parameters())
    print(f"params {n_params}  config {config}", flush=True)
    rows: list[dict] = []
    cpu0, last = time.process_time(), {}

    def evaluate(step, ema, seconds):
        cpu = time.process_time() - cpu0 - last.get("cpu_sampling", 0.0)
        t0, c0 = time.perf_counter(), time.process_time()
        kw = {"steps": a.sample_steps, "guidance": a.guidance}
        x = sample(ema, labels, generator=torch.Generator().manual_seed(0), clip=a.clip_only, **kw)
        wall = time.perf_counter() - t0
        extra = {}
        if not a.clip_only:
            clipped = sample(ema, labels, generator=torch.Generator().manual_seed(0), clip=True, **kw)
            extra["judge_acc_clipped"] = float((judge.predict(clipped) == labels).float().mean())
        last["cpu_sampling"] = last.get("cpu_sampling", 0.0) + time.process_time() - c0
        acc = float((judge.predict(x) == labels).float().mean())
        svc_acc = float((torch.as_tensor(svc.predict(x.flatten(1).numpy())) == labels).float().mean())
        rows.append(
            {"step": step, "train_seconds": seconds, "train_cpu_seconds": cpu, "judge_acc": acc,
             "svc_acc": svc_acc, **extra, "sample_seconds": wall,
             "sample_cpu_seconds": time.process_time() - c0}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        last["images"] = x

    train(config, ds, callback=evaluate, callback_every=a.every)
    info = {"config": dataclasses.asdict(config), "params": n_params, "per_class": a.per_class,
            "sample_steps": a.sample_steps, "guidance": a.guidance, "rows": rows}  # fmt: skip
    write(Path(a.out), info, last["images"].view(10, a.per_class, *last["images"].shape[1:]))


def final(ds, config: TrainConfig, judge, a) -> None:
    """The cached (or newly trained) model of ``config``: 100 samples per class, judge accuracy per class, FID
    in the judge's feature space against the real training digits (floor: real test vs real train digits),
    sampling time; writes final.json and final.md."""
    trained = load_or_train(ds, config)
    c0 = time.process_time()
    m = evaluate_generation(
        trained.model, judge, ds.train, per_class=100, steps=a.sample_steps, guidance=a.guidance
    )
    info = {
        "train_seconds": trained.seconds,
        "metrics": m.as_dict(),
        "sample_cpu_seconds": time.process_time() - c0,
        "fid_real_test_vs_train": fid(judge, ds.test.x, ds.train.x),
    }
    print(json.dumps(info), flush=True)
    out = Path(a.out)
    write_json(out / "final.json", info)
    per = ", ".join(f"{m.per_class_acc[c]:.2f}" for c in range(10))
    write_text(
        out / "final.md",
        "| judge accuracy (1,000 samples) | per class 0..9 | FID (judge space) | FID real test vs train |\n"
        "| ---: | --- | ---: | ---: |\n"
        f"| {m.remain_acc:.3f} | {per} | {m.fid:.2f} | {info['fid_real_test_vs_train']:.2f} |\n",
    )
    save_grid(
        out / "final_samples.png", m.images, columns=12, titles=("1,000 samples (first 12 per class)", "")
    )


SAMPLERS = [  # (label, sample() keywords)
    ("DDIM 50, η=0, guidance 2, x̂0 not clipped (default)", {}),
    ("x̂0 clipped to [−1, 1] (diffusers' clip_sample)", {"clip": True}),
    ("DDIM 20 steps", {"steps": 20}),
    ("DDIM 100 steps", {"steps": 100}),
    ("DDIM η=1", {"eta": 1.0}),
    ("DDPM ancestral, 100 steps", {"sampler": "ddpm", "steps": 100}),
    ("guidance 1 (conditional only)", {"guidance": 1.0}),
    ("guidance 3", {"guidance": 3.0}),
]


def ablate(ds, config: TrainConfig, judge, a) -> None:
    """Judge accuracy of ``--per-class`` samples per class of the cached model under each sampler setting."""
    if a.weights:
        model = build_unet(config.unet)
        model.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
        model.eval()
    else:
        model = load_or_train(ds, config).model
    labels = torch.arange(10).repeat_interleave(a.per_class)
    rows = []
    for label, kw in SAMPLERS:
        c0 = time.process_time()
        x = sample(model, labels, generator=torch.Generator().manual_seed(0), **kw)
        rows.append({"sampler": label, "judge_acc": float((judge.predict(x) == labels).float().mean()),
                     "cpu_seconds": time.process_time() - c0})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    write_json(Path(a.out) / "samplers.json", {"per_class": a.per_class, "rows": rows})
    lines = ["| sampler | judge accuracy | sampling CPU s |", "| --- | ---: | ---: |"]
    lines += [f"| {r['sampler']} | {r['judge_acc']:.3f} | {r['cpu_seconds']:.0f} |" for r in rows]
    write_text(Path(a.out) / "samplers.md", "\n".join(lines) + "\n")


def write(out: Path, info: dict, images: torch.Tensor | None) -> None:
    """curve.json, curve.md (table), curve.png (accuracy against training CPU time), samples.png."""
    rows = info["rows"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "curve.json", info)
    clip = all("judge_acc_clipped" in r for r in rows)  # older curves were sampled with clipping only
    lines = [
        "| steps | train CPU time (min, 1 thread) | wall (min, shared CPU) | judge accuracy | SVC accuracy |"
        + (" judge accuracy, x̂0 clipped |" if clip else ""),
        "| ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if clip else ""),
    ]
    lines += [
        f"| {r['step']} | {r['train_cpu_seconds'] / 60:.1f} | {r['train_seconds'] / 60:.1f} "
        f"| {r['judge_acc']:.3f} | {r['svc_acc']:.3f} |"
        + (f" {r['judge_acc_clipped']:.3f} |" if clip else "")
        for r in rows
    ]
    write_text(out / "curve.md", "\n".join(lines) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    minutes = [r["train_cpu_seconds"] / 60 for r in rows]
    ax.plot(minutes, [r["judge_acc"] for r in rows], "o-", label="judge (MLP, noise-augmented)")
    ax.plot(minutes, [r["svc_acc"] for r in rows], "s--", label="RBF SVC (clean digits)")
    if clip:
        ax.plot(minutes, [r["judge_acc_clipped"] for r in rows], "^:", label="judge, x̂0 clipped")
    ax.axhline(0.9, color="grey", lw=0.8, ls=":")
    chosen = [r["train_cpu_seconds"] / 60 for r in rows if r["step"] == TrainConfig().steps]
    for x in chosen:
        ax.axvline(x, color="green", lw=0.8, ls="--", label=f"default: {TrainConfig().steps} steps")
    ax.set_xlabel("training CPU time (min, one thread)")
    ax.set_ylabel("samples labelled as their class")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, out / "curve.png")
    if images is not None:
        title = f"EMA samples after {rows[-1]['step']} steps"
        save_grid(out / "samples.png", images, columns=12, titles=(title, ""))


if __name__ == "__main__":
    main()
