"""Decode benchmark: `python -m flash_mla_backend.bench [--kernels all] [--kv-cache bf16,fp8] [--json FILE]`.

Times the whole call (decode kernel + combine; the schedule is computed once and reused, as a
server reuses it across layers) by CUDA-graph replay, median of repeats, and reports TFLOP/s and
GB/s with the formulas of docs/benchmarks.md, next to the device ceilings measured in the same run
and upstream FlashMLA's published time on the H200 where one exists. FP8-cache rows (e4m3, bf16
q) run the kernels that take an FP8 cache, in the same run; their GB/s counts 576 bytes per token.
"""

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass

import torch

import flash_mla_backend as fmb
from flash_mla_backend import _plan

# (b, s_q, mean s_k, h_q, varlen, causal, FlashMLA 9241ae3 µs on the H200 or None)
CONFIGS = [
    (128, 1, 4096, 128, True, False, 251),
    (128, 1, 8192, 128, True, False, 470),
    (128, 1, 16384, 128, True, False, 1027),
    (128, 1, 32768, 128, True, False, 1986),
    (128, 2, 4096, 128, True, True, 462),
    (128, 2, 8192, 128, True, True, 979),
    (128, 2, 16384, 128, True, True, 1898),
    (128, 2, 32768, 128, True, True, 3826),
    (128, 1, 8192, 16, True, False, 295),
    (128, 1, 32768, 16, True, False, 1146),
    (64, 4, 8192, 16, True, True, 182),
    (128, 1, 8192, 64, True, False, 335),
    (8, 1, 65536, 128, False, False, 232),
    (1, 1, 131072, 128, False, False, 79),
    (32, 1, 2048, 128, False, False, 43),
    (128, 1, 1024, 16, False, False, None),
    (16, 16, 1024, 16, False, True, None),
]


KV_CACHE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}


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
    flashmla_us: float = None


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


def make_inputs(b, s_q, s_k, h_q, varlen, kv_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if varlen:
        seqlens = torch.normal(float(s_k), s_k / 2, (b,), generator=g).round().clamp(min=s_q).to(torch.int32)
    else:
        seqlens = torch.full((b,), s_k, dtype=torch.int32)
    pages = (seqlens + 63) // 64
    max_pages = int(pages.max())
    block_table = torch.randperm(b * max_pages, generator=g).to(torch.int32).reshape(b, max_pages)
    k_cache = torch.randn(b * max_pages, 64, 1, 576, device="cuda").to(kv_dtype)
    q = torch.randn(b, s_q, h_q, 576, dtype=torch.bfloat16, device="cuda")
    return q, k_cache, block_table.cuda(), seqlens.cuda()


def bench_config(kernel, kv_cache, b, s_q, s_k, h_q, varlen, causal, flashmla_us):
    kv_dtype = KV_CACHE_DTYPES[kv_cache]
    q, k_cache, block_table, seqlens = make_inputs(b, s_q, s_k, h_q, varlen, kv_dtype)
    fp8 = kv_dtype == fmb.FP8_DTYPE
    descale_k = torch.ones(1, device="cuda") if fp8 else None
    os.environ[_plan.KERNEL_ENV] = kernel
    md, splits = fmb.get_mla_metadata(seqlens, s_q * h_q, 1, is_fp8_kvcache=fp8)
    out = torch.empty(b, s_q, h_q, 512, dtype=q.dtype, device="cuda")
    us = time_graph(lambda: fmb.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, md, splits,
                                                        causal=causal, out=out, descale_k=descale_k))
    mean_len = seqlens.float().mean().item()
    flop = b * h_q * s_q * mean_len * 2 * (576 + 512)
    bytes_moved = b * s_q * h_q * 576 * 2 + b * mean_len * 576 * k_cache.element_size() + b * s_q * h_q * 512 * 2
    return Result(kernel, kv_cache, b, s_q, s_k, h_q, varlen, causal, us, flop / us / 1e6, bytes_moved / us / 1e3,
                  flashmla_us)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="all", help="comma-separated kernel names, or 'all' that fit the GPU")
    parser.add_argument("--kv-cache", default="bf16,fp8", help="cache dtypes to run: bf16, fp8 or both")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    dev = _plan._device_properties(torch.device("cuda"))
    if args.kernels == "all":
        kernels = [k for k in torch.ops.flash_mla_backend.decode_kernels() if _plan._fits(k, dev)]
    else:
        kernels = args.kernels.split(",")
    ceilings = measure_ceilings()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
          f"flash_mla_backend {fmb.__version__}")
    print(f"# ceilings: copy {ceilings['copy_tbps']:.2f} TB/s (read+write), read {ceilings['read_tbps']:.2f} TB/s, "
          f"bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s")
    # (kernel, cache dtype) pairs: an FP8 cache runs on the kernels that take one.
    runs = [(k, c) for c in args.kv_cache.split(",") for k in kernels
            if c == "bf16" or _plan.kernel_info(k).takes_fp8_cache]
    print("| kernel | cache | b | s_q | s_k | h_q | varlen | causal | µs | TFLOP/s | GB/s | FlashMLA µs | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for config in CONFIGS:
        for kernel, kv_cache in runs:
            r = bench_config(kernel, kv_cache, *config)
            results.append(r)
            speedup = f"{r.flashmla_us / r.us:.2f}x" if r.flashmla_us else "-"
            print(f"| {r.kernel} | {r.kv_cache} | {r.b} | {r.s_q} | {r.s_k} | {r.h_q} | "
                  f"{'T' if r.varlen else 'F'} | {'T' if r.causal else 'F'} | {r.us:.1f} | {r.tflops:.0f} | "
                  f"{r.gbps:.0f} | {r.flashmla_us or '-'} | {speedup} |", flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
                       "ceilings": ceilings, "results": [asdict(r) for r in results]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
