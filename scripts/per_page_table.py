"""Per-page times from a `python -m flash_mla_backend.bench --compare ... --json F` result, for
placing a kernel's per-page chain (docs/sm90-kernel-log.md): for each row, the CTA-pages per SM
(pages of all requests x 64-row query tiles x kv heads / SMs), ours in µs per CTA-page, and each
peer's difference to ours in µs per CTA-page (fixed costs included, so short rows overstate).

    python scripts/per_page_table.py compare.json [--sms 132]
"""

import argparse
import json
import math

import torch

from flash_mla_backend.bench import row_seqlens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--sms", type=int, default=132, help="SMs of the GPU the JSON was measured on")
    parser.add_argument("--seed", type=int, default=0, help="the benchmark's input seed")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    peers = data["peers"]
    print("| b | s_q | s_k | h_q | CTA-pages per SM | ours µs/page | "
          + " | ".join(f"{n} − ours µs/page" for n in peers) + " |")
    print("|---" * (6 + len(peers)) + "|")
    for r in data["results"]:
        seqlens = row_seqlens(r["b"], r["s_q"], r["s_k"], r["varlen"], torch.Generator().manual_seed(args.seed))
        pages = int(((seqlens + 63) // 64).sum())
        per_sm = pages * math.ceil(r["s_q"] * r["h_q"] / 64) / args.sms  # h_kv = 1 in the benchmark
        cells = [r["b"], r["s_q"], r["s_k"], r["h_q"], f"{per_sm:.0f}", f"{r['us'] / per_sm:.2f}"]
        cells += [f"{(r['peers'][n]['us'] - r['us']) / per_sm:+.2f}" if n in r["peers"] else "-" for n in peers]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
