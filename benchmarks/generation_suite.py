"""Suite ``generation`` (run only when named: it trains two models): the conditional
DDPM and cGAN of ``porevox generate`` on the demo twin study, each trained with the
``cpu`` preset within a CPU budget, judged by the Table-3 analog.

Cases:

* ``DDPM train`` / ``cGAN train``: training on the study's 64 × 64 crops (the truth
  labels of the demo twin, 18 classes), until the preset's step count or the budget
  (``$POREVOX_BENCH_GEN_MINUTES``, default 15 minutes per model; quick: 1). There is
  no reference code to train the same model faster, so these rows carry times, steps
  and peak memory, with the Table-3 analog in their notes.
* ``DDPM sampling``: DDIM in 50 steps with the default guidance and η (porevox's
  sampler) against the plain ancestral DDPM sampler of Ho et al. (2020), Algorithm 2,
  over all 1000 steps with the same network and guidance, on the same number of
  images: the ratio is the speed-up, the check the two samplers' mean densities.
* ``Table 3``: ``generate evaluate`` with 128 generated images per class against all
  the real crops of the class, and, as the ceiling no generator can beat with that
  many images, the R² of 128 real crops per class drawn at random against all.

Writes ``out/generation/`` (the study, the models, ``table3.md/.json`` and the
figures Fig. 5 and 6) and keeps it: the image grid is to be looked at.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from .harness import isolated, log, peak, prepared, row

MINUTES_ENV = "POREVOX_BENCH_GEN_MINUTES"
LABELS = "truth"


def _threads() -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)


def make_study(folder: str) -> dict:
    from porevox.pipelines.synth import synthesize_study

    manifest = synthesize_study(folder, preset="demo", seed=0, preview=False)
    return {"samples": len(manifest["samples"])}


def train(folder: str, kind: str, minutes: float, steps: int | None) -> dict:
    from porevox.pipelines.generate import train_generator

    _threads()
    t0 = time.perf_counter()
    result = train_generator(folder, kind=kind, preset="cpu", labels=LABELS, minutes=minutes,
                             steps=steps or 100_000)
    return {"time_s": time.perf_counter() - t0, "times_s": [result["seconds"]], "peak": peak(), **result}


def sampling(folder: str, n: int, ancestral_n: int) -> dict:
    """porevox's DDIM (50 steps, the default guidance) and the plain ancestral sampler."""
    import torch

    from porevox.models import diffusion
    from porevox.pipelines.generate import GUIDANCE, Generator

    _threads()
    g = Generator(Path(folder) / "models" / "ddpm")
    label = g.class_of("NPC", 250)
    t0 = time.perf_counter()
    images = g.sample(n, paste="NPC", temperature_c=250, steps=50, guidance=GUIDANCE, seed=0)
    ddim_s = time.perf_counter() - t0

    net, cfg = g.net, g.config
    sched = diffusion.Schedule(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((ancestral_n, 1, cfg.image_size, cfg.image_size), generator=gen)
    labels = torch.full((ancestral_n,), label, dtype=torch.long)
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in range(cfg.timesteps - 1, -1, -1):
            tt = torch.full((ancestral_n,), t, dtype=torch.long)
            eps = net(x, tt, labels)
            if GUIDANCE != 1.0:
                uncond = net(x, tt)
                eps = uncond + GUIDANCE * (eps - uncond)
            beta, alpha, abar = sched.betas[t], sched.alphas[t], sched.alpha_bar[t]
            x = (x - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
            if t:
                x = x + math.sqrt(beta) * torch.randn(x.shape, generator=gen)
    ancestral_s = (time.perf_counter() - t0) * n / ancestral_n
    return {"ddim_s": ddim_s, "ancestral_s": ancestral_s, "ddim_density": float(images.mean()),
            "ancestral_density": float((x > 0).float().mean()), "peak": peak()}


def evaluate(folder: str, n: int, out: str) -> dict:
    from porevox.pipelines import generation_eval as ge
    from porevox.pipelines.crops import crop_index
    from porevox.pipelines.generation_study import _real_crops, evaluate_generators

    _threads()
    models = [Path(folder) / "models" / k for k in ("ddpm", "cgan")]
    t0 = time.perf_counter()
    result = evaluate_generators(folder, [m for m in models if (m / "model.json").exists()], n=n,
                                 out=out)
    seconds = time.perf_counter() - t0
    index = crop_index(folder, labels=LABELS, size=64)
    real = result["real"]                       # every real crop of each class
    drawn = [ge.class_statistics(_real_crops(index, c, n, 1), index.pixel_size)
             for c in range(len(index.classes))]
    ceiling = ge.table3(index.classes, real, {"real": drawn})["real"]
    return {"time_s": seconds, "table3": result["table3"], "ceiling": ceiling,
            "markdown": ge.markdown({**result["table3"], f"real ({n} crops)": ceiling}),
            "figures": result.get("figures", {}), "peak": peak()}


def _summary(table: dict) -> str:
    return "; ".join(f"{p} {r['average']:.2f}" for p, r in table.items())


def run(cfg) -> list[dict]:
    from porevox.pipelines.generate import ETA

    minutes = float(os.environ.get(MINUTES_ENV, cfg.pick(15.0, 1.0)))
    steps = cfg.pick(None, 60)
    n = cfg.pick(128, 16)
    out = Path(cfg.out) / "generation"
    folder = out / "study"
    log(f"  generation: the demo twin study in {folder}")
    if not (folder / "study.yaml").exists():
        prepared("the demo twin study", make_study, str(folder), timeout=900)
    rows = []
    for kind in ("ddpm", "cgan"):
        log(f"  generation: training the {kind} (cpu preset, at most {minutes:g} min)")
        res = isolated(train, str(folder), kind, minutes, steps, timeout=60 * minutes + 600)
        rows.append(row("generation", f"{kind.upper() if kind == 'ddpm' else 'cGAN'} train",
                        shape=(res.get("crops", 0), 64, 64), dtype="uint8", pv=res, ref={},
                        reference="none (training time)",
                        notes=f"{res.get('steps')} steps in {res.get('seconds')} s "
                              f"(budget {minutes:g} min); final loss {res.get('final_loss')}"))
    log("  generation: sampling, DDIM against ancestral")
    s = isolated(sampling, str(folder), 64, cfg.pick(16, 4), timeout=1800)
    rows.append(row("generation", "DDPM sampling", shape=(64, 64, 64), dtype="uint8",
                    pv={"time_s": s.get("ddim_s"), "peak": s.get("peak")},
                    ref={"time_s": s.get("ancestral_s")},
                    reference="ancestral DDPM sampling (Ho et al. 2020, Alg. 2), 1000 steps, same "
                              "network and guidance, scaled to 64 images",
                    check=(f"density DDIM {s['ddim_density']:.3f}, ancestral {s['ancestral_density']:.3f}"
                           if "ddim_density" in s else ""),
                    notes=f"64 images of NPC 250 °C; DDIM 50 steps (η = {ETA:g}), the default guidance"))
    log(f"  generation: Table-3 analog, {n} generated images per class")
    e = isolated(evaluate, str(folder), n, str(out), timeout=3600)
    if e.get("markdown"):
        (out / "table3_with_ceiling.md").write_text(e["markdown"] + "\n")
        log(e["markdown"])
    rows.append(row("generation", "Table 3", shape=(18 * n, 64, 64), dtype="uint8",
                    pv=e, ref={}, reference=f"all real crops per class; ceiling: {n} real crops",
                    check="; ".join(f"{m}: {_summary(t)}" for m, t in (e.get("table3") or {}).items()),
                    notes=(f"average R² per paste; {n} real crops against all: "
                           f"{_summary(e['ceiling'])}" if e.get("ceiling") else ""),
                    table3=e.get("table3"), ceiling=e.get("ceiling"), figures=e.get("figures")))
    return rows
