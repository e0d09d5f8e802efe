"""Time one optimizer step of every NAGGS path next to torch's SGD and AdamW on one parameter list.

The step is pure memory traffic: NAG-GS and SGD with momentum read x, v (buffer), g and write x, v
(5 tensors' worth of bytes per parameter, 20 B for fp32); AdamW reads x, g, m, s and writes x, m, s (7).
GB/s below uses those counts, so it is comparable to the device's copy bandwidth.

    python benchmarks/optimizer_step.py                          # CPU, a many-tensor list
    python benchmarks/optimizer_step.py --device cuda --layers 24 --d-model 1024   # 354 M params on GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from naggs_lightning import NAGGS, AdaNAGGS

BYTES_PER_ELEMENT_TOUCHED = {"naggs": 5, "sgd": 5, "adamw": 7}

#: AdaNAGGS against torch's AdamW, path for path (issue 22's target: <= 1.10x), timed interleaved.
ADAPTIVE_PAIRS = {
    "foreach": (lambda p: AdaNAGGS(p, lr=0.03, foreach=True), lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True)),
    "fused": (lambda p: AdaNAGGS(p, lr=0.03, fused=True), lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)),
}


def transformer_shapes(layers: int, d_model: int, vocab: int) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-style stack: 12 tensors a block plus embeddings and a final norm."""
    d, ff = d_model, 4 * d_model
    block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (ff, d), (ff,), (d, ff), (d,)]
    return [(vocab, d), (1024, d)] + block * layers + [(d,), (d,)]


def make_params(shapes, device, dtype) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype).requires_grad_()
        p.grad = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype) * 1e-3
        params.append(p)
    return params


class FormulaLoop(torch.optim.Optimizer):
    """NAG-GS as a per-parameter loop of the paper's formulas with out-of-place tensor arithmetic,
    the way the authors' public code is written: the baseline the fast paths are measured against."""

    def __init__(self, params, lr=0.1, mu=1.0, gamma=1.0):
        super().__init__(params, {"lr": lr, "mu": mu, "gamma": gamma})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            a, mu = group["lr"], group["mu"]
            gamma = group["gamma"] = (group["gamma"] + a * mu) / (1 + a)
            for p in group["params"]:
                v = self.state[p].setdefault("v", p.detach().clone())
                v_new = (gamma * v + a * mu * p - a * p.grad) / (gamma + a * mu)
                p.copy_((p + a * v_new) / (1 + a))
                v.copy_(v_new)


def candidates() -> dict[str, tuple[str, Callable]]:
    """name -> (byte-count family, factory(params) -> optimizer)."""
    return {
        "NAGGS formula loop": ("naggs", lambda p: FormulaLoop(p, lr=0.1)),
        "NAGGS single-tensor": ("naggs", lambda p: NAGGS(p, lr=0.1, foreach=False)),
        "NAGGS foreach": ("naggs", lambda p: NAGGS(p, lr=0.1, foreach=True)),
        "NAGGS fused": ("naggs", lambda p: NAGGS(p, lr=0.1, fused=True)),
        "SGD-nesterov loop": ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, foreach=False)),
        "SGD-nesterov foreach": (
            "sgd",
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, foreach=True),
        ),
        "SGD-nesterov fused": ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True)),
        "SGD-momentum foreach": ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True)),
        "AdamW foreach": ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True)),
        "AdamW fused": ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)),
        "AdaNAGGS foreach": ("adamw", lambda p: AdaNAGGS(p, lr=0.03, foreach=True)),
        "AdaNAGGS fused": ("adamw", lambda p: AdaNAGGS(p, lr=0.03, fused=True)),
    }


def time_step(opt: torch.optim.Optimizer, device: str, warmup: int, repeats: int) -> float:
    """Median milliseconds of opt.step() over ``repeats`` timed steps."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        opt.step()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_interleaved(
    factories: dict[str, Callable], shapes, device: str, dtype: torch.dtype, warmup: int, repeats: int
) -> dict[str, float]:
    """Median milliseconds of opt.step() for each factory, the optimizers stepping in turn (one step of
    each per round), so that a busy or throttling machine slows them alike."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    opts = {name: factory(make_params(shapes, device, dtype)) for name, factory in factories.items()}
    for _ in range(warmup):
        for opt in opts.values():
            opt.step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--layers", type=int, default=24, help="transformer blocks (12 tensors each)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", nargs="*", help="substrings of the candidate names to run")
    parser.add_argument("--adaptive-only", action="store_true", help="only AdaNAGGS against AdamW, interleaved")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    shapes = transformer_shapes(args.layers, args.d_model, args.vocab)
    numel = sum(torch.Size(s).numel() for s in shapes)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {len(shapes)} tensors, {numel / 1e6:.2f} M params, {args.dtype}")
    print(f"{'optimizer':<24}{'ms/step':>10}{'GB/s':>10}")
    results = {}
    candidates_ = {} if args.adaptive_only else candidates()
    for label, (family, factory) in candidates_.items():
        if args.only and not any(s in label for s in args.only):
            continue
        params = make_params(shapes, args.device, dtype)
        try:
            opt = factory(params)
            ms = time_step(opt, args.device, args.warmup, args.repeats)
        except (RuntimeError, ValueError) as err:  # e.g. a fused kernel this build lacks
            print(f"{label:<24}{'n/a':>10}   ({str(err).splitlines()[0][:60]})")
            continue
        gbs = BYTES_PER_ELEMENT_TOUCHED[family] * numel * dtype.itemsize / (ms * 1e-3) / 1e9
        results[label] = ms
        print(f"{label:<24}{ms:>10.3f}{gbs:>10.1f}")
        del opt, params

    print("ratios (> 1 means the NAGGS path is faster):")
    for ours in ("NAGGS foreach", "NAGGS fused"):
        for theirs in (
            "NAGGS formula loop",
            "NAGGS single-tensor",
            "SGD-nesterov foreach",
            "SGD-momentum foreach",
            "SGD-nesterov fused",
        ):
            if ours in results and theirs in results:
                print(f"  {theirs} / {ours}: {results[theirs] / results[ours]:.2f}x")

    print(f"AdaNAGGS / AdamW, timed interleaved ({args.repeats} rounds; target <= 1.10x):")
    for path, (ours, theirs) in ADAPTIVE_PAIRS.items():
        try:
            ms = time_interleaved(
                {"AdaNAGGS": ours, "AdamW": theirs}, shapes, args.device, dtype, args.warmup, args.repeats
            )
        except (RuntimeError, ValueError) as err:
            print(f"  {path:<8} n/a   ({str(err).splitlines()[0][:60]})")
            continue
        print(
            f"  {path:<8} AdaNAGGS {ms['AdaNAGGS']:.3f} ms, AdamW {ms['AdamW']:.3f} ms: "
            f"{ms['AdaNAGGS'] / ms['AdamW']:.3f}x"
        )


if __name__ == "__main__":
    main()
