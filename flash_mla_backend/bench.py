"""Decode benchmark: `python -m flash_mla_backend.bench [--kernels auto|all|NAME,...] [--kv-cache bf16,fp8]
[--compare MODULE,...] [--compare-fp8 MODULE,...] [--rows I,...] [--json FILE] [--plot FILE.png]`.

Times the whole call (decode kernel + combine; the schedule is computed once and reused, as a
server reuses it across layers) by CUDA-graph replay, median of repeats, and reports TFLOP/s and
GB/s with the formulas of docs/benchmarks.md, next to the device ceilings (read bandwidth, bf16
matmul) measured in the same run. FP8-cache rows (e4m3, bf16 q) run the kernels that take an
FP8 cache; their GB/s counts 576 bytes per token.

--compare times peers side by side with ours in the same process, interleaved per row (ours,
peers, peers in reverse, ours; each time is the mean of its two medians), checks that each
computes the same output as ours and prints peer µs / ours µs. A peer is any importable module
with FlashMLA's API: `get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)` returning
either explicit tensors or FlashMLA's lazily filled schedule (with num_splits None), and
`flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, metadata, num_splits,
softmax_scale, causal)`. Peers take the bf16 rows; a peer that is a build of this package (it
has FP8_DTYPE, e.g. an older revision made by scripts/make_variant.sh) takes the FP8 rows too,
with the same kernel forced.

--compare-fp8 names peers for the FP8 rows only that take the same API with the 16-bit q and
cache and quantise them themselves (../shared/tools/peers/vllm_flashmla_fp8.py: vLLM's FP8
FlashMLA, e4m3 q and cache). FP8 rows then also time ours on the 16-bit cache ("ours_bf16"), so
that they show ours FP8 against the FP8 peer and against our own 16-bit decode.
"""

import argparse
import importlib
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field

import torch

import flash_mla_backend as fmb
from flash_mla_backend import _plan

# (b, s_q, mean s_k, h_q, varlen, causal): ../shared/design/mla-decode.md's list
CONFIGS = [
    (128, 1, 4096, 128, True, False),
    (128, 1, 8192, 128, True, False),
    (128, 1, 16384, 128, True, False),
    (128, 1, 32768, 128, True, False),
    (128, 2, 4096, 128, True, True),
    (128, 2, 8192, 128, True, True),
    (128, 2, 16384, 128, True, True),
    (128, 2, 32768, 128, True, True),
    (128, 1, 8192, 16, True, False),
    (128, 1, 32768, 16, True, False),
    (64, 4, 8192, 16, True, True),
    (128, 1, 8192, 64, True, False),
    (8, 1, 65536, 128, False, False),
    (1, 1, 131072, 128, False, False),
    (32, 1, 2048, 128, False, False),
    (128, 1, 1024, 16, False, False),
    (16, 16, 1024, 16, False, True),
    (256, 1, 2048, 32, True, False),
    (48, 3, 12000, 128, True, True),
]

KV_CACHE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
# Relative output difference (norm) beyond which a peer is reported as computing something else:
# bf16 outputs of the same inputs differ by rounding (~3e-3).
SAME_OUTPUT_RTOL = 2e-2


@dataclass
class PeerResult:
    us: float
    ratio: float  # peer µs / ours µs: above 1, ours is faster
    rel_diff: float  # ||peer out - ours|| / ||ours||
    us_samples: list  # the medians of the two passes (A B B A), whose spread shows the drift


@dataclass
class Result:
    kernel: str
    kv_cache: str
    b: int
    s_q: int
    s_k: int
    h_q: int
    varlen: bool
    causal: bool
    us: float
    tflops: float
    gbps: float
    us_samples: list = field(default_factory=list)  # the medians of the two passes
    peers: dict = field(default_factory=dict)  # module name -> PeerResult


def time_graph(fn, iters_per_graph=10, repeats=30):
    """Median time of one fn() call, from the replay of a graph holding iters_per_graph calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters_per_graph):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / iters_per_graph)
    return statistics.median(times)


def measure_ceilings():
    n = 1 << 30  # 2 GiB of bf16, far beyond L2
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    copy_us = time_graph(lambda: dst.copy_(src), iters_per_graph=3, repeats=10)
    read_us = time_graph(lambda: src.sum(dtype=torch.float32), iters_per_graph=3, repeats=10)
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_us = time_graph(lambda: a @ b, iters_per_graph=3, repeats=10)
    return {
        "copy_tbps": 2 * 2 * n / copy_us / 1e6,
        "read_tbps": 2 * n / read_us / 1e6,
        "matmul_tflops": 2 * 8192**3 / mm_us / 1e6,
    }


def row_seqlens(b, s_q, s_k, varlen, generator):
    """A row's cache_seqlens (CPU): ~ normal(s_k, s_k / 2), at least s_q, when varlen; else s_k."""
    if varlen:
        return torch.normal(float(s_k), s_k / 2, (b,), generator=generator).round().clamp(min=s_q).to(torch.int32)
    return torch.full((b,), s_k, dtype=torch.int32)


def make_inputs(b, s_q, s_k, h_q, varlen, seed=0):
    """bf16 q and cache; the FP8 rows quantise this cache (scale 1, the randn values fit e4m3)."""
    g = torch.Generator().manual_seed(seed)
    seqlens = row_seqlens(b, s_q, s_k, varlen, g)
    pages = (seqlens + 63) // 64
    max_pages = int(pages.max())
    block_table = torch.randperm(b * max_pages, generator=g).to(torch.int32).reshape(b, max_pages)
    k_cache = torch.randn(b * max_pages, 64, 1, 576, device="cuda").to(torch.bfloat16)
    q = torch.randn(b, s_q, h_q, 576, dtype=torch.bfloat16, device="cuda")
    return q, k_cache, block_table.cuda(), seqlens.cuda()


def takes_fp8(module) -> bool:
    return getattr(module, "FP8_DTYPE", None) is not None


def decode_call(module, q, k_cache, block_table, seqlens, causal, descale_k):
    """fn() running one decode with `module`'s API (its schedule made once, here)."""
    s_q, h_q = q.shape[1], q.shape[2]
    if descale_k is None:
        metadata, num_splits = module.get_mla_metadata(seqlens, s_q * h_q, 1)
        return lambda: module.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, metadata, num_splits,
                                                     None, causal)[0]
    metadata, num_splits = module.get_mla_metadata(seqlens, s_q * h_q, 1, is_fp8_kvcache=True)
    out = torch.empty(q.shape[:3] + (512,), dtype=q.dtype, device=q.device)
    return lambda: module.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, metadata, num_splits,
                                                 causal=causal, out=out, descale_k=descale_k)[0]


OURS_BF16 = "ours_bf16"  # the FP8 rows' timing of ours on the 16-bit cache


def fp8_row_extra_names(fp8_peers):
    """Names of the contenders an FP8 row adds after the peers: ours on the 16-bit cache, then the
    FP8 peers."""
    return [OURS_BF16] + [m.__name__ for m in fp8_peers]


def bench_config(kernel, kv_cache, config, peers, fp8_peers=()):
    b, s_q, s_k, h_q, varlen, causal = config
    q, k_cache, block_table, seqlens = make_inputs(b, s_q, s_k, h_q, varlen)
    fp8 = kv_cache == "fp8"
    descale_k = torch.ones(1, device="cuda") if fp8 else None
    cache = k_cache.to(KV_CACHE_DTYPES[kv_cache])
    if kernel == "auto":
        os.environ.pop(_plan.KERNEL_ENV, None)
        kernel = _plan.plan_decode(s_q * h_q, 1, q.device, fp8).kernel
    else:
        os.environ[_plan.KERNEL_ENV] = kernel
    ours = decode_call(fmb, q, cache, block_table, seqlens, causal, descale_k)
    contenders = [ours] + [decode_call(m, q, cache if fp8 else k_cache, block_table, seqlens, causal, descale_k)
                           for m in peers]
    names = [m.__name__ for m in peers]
    if fp8:
        contenders += [decode_call(m, q, k_cache, block_table, seqlens, causal, None) for m in (fmb, *fp8_peers)]
        names += fp8_row_extra_names(fp8_peers)
    order = list(range(len(contenders)))
    times = [[] for _ in contenders]
    for i in order + order[::-1]:  # A B B A: drift between the two halves cancels
        times[i].append(time_graph(contenders[i]))
    us = [statistics.mean(t) for t in times]
    reference = ours().float()
    mean_len = seqlens.float().mean().item()
    flop = b * h_q * s_q * mean_len * 2 * (576 + 512)
    bytes_moved = b * s_q * h_q * 576 * 2 + b * mean_len * 576 * cache.element_size() + b * s_q * h_q * 512 * 2
    result = Result(kernel, kv_cache, b, s_q, s_k, h_q, varlen, causal, us[0], flop / us[0] / 1e6,
                    bytes_moved / us[0] / 1e3, times[0])
    for name, fn, peer_us, peer_times in zip(names, contenders[1:], us[1:], times[1:]):
        diff = ((fn().float() - reference).norm() / reference.norm()).item()
        result.peers[name] = PeerResult(peer_us, peer_us / us[0], diff, peer_times)
    return result


def plot_roofline(path, results, ceilings, peer_names):
    """A roofline (TFLOP/s against FLOP per byte, both logarithmic) of ours and each peer per row,
    under the read-bandwidth and bf16-matmul ceilings measured in the same run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit(f"--plot needs matplotlib (pip install matplotlib): {error}") from error
    read_tbps, matmul_tflops = ceilings["read_tbps"], ceilings["matmul_tflops"]
    intensity = [r.tflops / r.gbps * 1e3 for r in results]  # FLOP per byte
    lo, hi = min(intensity) / 2, max(intensity) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.plot(xs, [min(read_tbps * x, matmul_tflops) for x in xs], color="black",
            label=f"ceiling: read {read_tbps:.2f} TB/s, bf16 matmul {matmul_tflops:.0f} TFLOP/s")
    ax.scatter(intensity, [r.tflops for r in results], marker="o", label="flash_mla_backend", zorder=3)
    for marker, name in zip("s^vDP*", peer_names):
        points = [(x, r.tflops * r.us / r.peers[name].us) for x, r in zip(intensity, results) if name in r.peers]
        ax.scatter(*zip(*points), marker=marker, label=name, zorder=3)
    for x, r in zip(intensity, results):
        ax.annotate(f"{r.b}x{r.s_q}x{r.s_k}x{r.h_q}{' ' + r.kv_cache if r.kv_cache != 'bf16' else ''}", (x, r.tflops),
                    fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="FLOP per byte (docs/benchmarks.md formulas)", ylabel="TFLOP/s",
           title=f"MLA decode on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'the GPU'}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def check_device():
    """A message for the user, or None when a GPU and the extension are there to benchmark."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False): the benchmark times GPU kernels"
    try:
        fmb.check_extension()
    except fmb.ExtensionNotBuiltError as error:
        return str(error)
    return None


def format_row(r, peer_names):
    cells = [r.kernel, r.kv_cache, r.b, r.s_q, r.s_k, r.h_q, "T" if r.varlen else "F", "T" if r.causal else "F",
             f"{r.us:.1f}", f"{r.tflops:.0f}", f"{r.gbps:.0f}"]
    for name in peer_names:
        p = r.peers.get(name)
        cells += ["-", "-"] if p is None else [
            f"{p.us:.1f}", f"{p.ratio:.2f}" + ("" if p.rel_diff < SAME_OUTPUT_RTOL else f" (DIFFERS {p.rel_diff:.1e})")]
    return "| " + " | ".join(map(str, cells)) + " |"


def format_skipped_row(kernel, kv_cache, config, reason):
    b, s_q, s_k, h_q, varlen, causal = config
    cells = [kernel, kv_cache, b, s_q, s_k, h_q, "T" if varlen else "F", "T" if causal else "F", f"skipped: {reason}"]
    return "| " + " | ".join(map(str, cells)) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="auto",
                        help="'auto' (the planner's choice per row, what users get), 'all' that fit the GPU, or names")
    parser.add_argument("--kv-cache", default="bf16,fp8", help="cache dtypes to run: bf16, fp8 or both")
    parser.add_argument("--compare", default="", help="comma-separated peer modules with FlashMLA's API")
    parser.add_argument("--compare-fp8", default="",
                        help="comma-separated peer modules for the FP8 rows that quantise the 16-bit inputs themselves")
    parser.add_argument("--rows", help="comma-separated indices into the configuration list (default: all)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="draw a roofline of the results into this PNG file (needs matplotlib)")
    args = parser.parse_args(argv)

    problem = check_device()
    if problem:
        print(f"flash_mla_backend.bench: {problem}", file=sys.stderr)
        return 2
    peers = [importlib.import_module(name) for name in args.compare.split(",") if name]
    fp8_peers = [importlib.import_module(name) for name in args.compare_fp8.split(",") if name]
    dev = _plan._device_properties(torch.device("cuda"))
    if args.kernels == "all":
        kernels = [k for k in torch.ops.flash_mla_backend.decode_kernels() if _plan._fits(k, dev)]
    else:
        kernels = args.kernels.split(",")
    ceilings = measure_ceilings()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
          f"flash_mla_backend {fmb.__version__}" + "".join(f" | peer {m.__name__}" for m in peers + fp8_peers))
    print(f"# ceilings: copy {ceilings['copy_tbps']:.2f} TB/s (read+write), read {ceilings['read_tbps']:.2f} TB/s, "
          f"bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s")
    # (kernel, cache dtype) pairs: an FP8 cache runs on the kernels that take one.
    runs = [(k, c) for c in args.kv_cache.split(",") for k in kernels
            if c == "bf16" or k == "auto" or _plan.kernel_info(k).takes_fp8_cache]
    names = [m.__name__ for m in peers]
    if any(c == "fp8" for _, c in runs):
        names += fp8_row_extra_names(fp8_peers)
    print("| kernel | cache | b | s_q | s_k | h_q | varlen | causal | µs | TFLOP/s | GB/s |"
          + "".join(f" {n} µs | {n} / ours |" for n in names))
    print("|---" * (11 + 2 * len(names)) + "|")
    results = []
    configs = [CONFIGS[int(i)] for i in args.rows.split(",")] if args.rows else CONFIGS
    total = len(configs) * len(runs)
    for index, (config, (kernel, kv_cache)) in enumerate((c, r) for c in configs for r in runs):
        print(f"[{index + 1}/{total}] {kernel} {kv_cache} {config}", file=sys.stderr, flush=True)
        row_peers = [m for m in peers if kv_cache == "bf16" or takes_fp8(m)]
        try:
            r = bench_config(kernel, kv_cache, config, row_peers, fp8_peers)
        except torch.OutOfMemoryError:
            # The largest rows with every contender's cache (an FP8 peer adds its own) may not fit
            # a smaller GPU (H100, 80 GB): the row is reported and the run goes on.
            print(format_skipped_row(kernel, kv_cache, config, "out of GPU memory"), flush=True)
        else:
            results.append(r)
            print(format_row(r, names), flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
                       "peers": names, "ceilings": ceilings, "results": [asdict(r) for r in results]}, f, indent=1)
    if args.plot:
        plot_roofline(args.plot, results, ceilings, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
