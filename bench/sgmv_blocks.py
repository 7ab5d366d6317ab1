"""The grouped LoRA expand (``ops.sgmv``) and the fused groups' products at the 7B decode shapes on one GPU: each
group's product with and without every slot's ``A`` under the weights, and the expand for several column blocks and
warps, each timed as a CUDA graph of 32 layers' worth of launches (what a decode step replays).

    python bench/sgmv_blocks.py   # prints a table; --batch 16 --slots 9 --rank 64
"""

from __future__ import annotations

import argparse

import torch

from loraops_serving.ops.sgmv import add_lora_grouped

GROUPS = {"qkv": ([4096] * 3, 4096), "o": ([4096], 4096), "gate_up": ([11008] * 2, 4096), "down": ([4096], 11008)}


def graph_time(fn, layers: int = 32, reps: int = 50) -> float:
    """Microseconds per call of ``fn`` replayed ``layers`` times in one CUDA graph (median of ``reps``)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(layers):
            fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / layers)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slots", type=int, default=9)
    parser.add_argument("--rank", type=int, default=64)
    args = parser.parse_args()
    m, s, r, dtype = args.batch, args.slots, args.rank, torch.bfloat16
    slots = (torch.arange(m, device="cuda") % (s - 1)) + 1  # every adapter in use
    total = {}
    for name, (sizes, fan_in) in GROUPS.items():
        n = sum(sizes)
        starts = [0]
        for size in sizes:
            starts.append(starts[-1] + size)
        extra = s * len(sizes) * r
        # fresh weights per layer (32 copies) so that nothing stays in L2 between layers
        weights = [torch.randn(n + extra, fan_in, device="cuda", dtype=dtype) for _ in range(32)]
        bs = [torch.randn(s, n, r, device="cuda", dtype=dtype) * 0.1 for _ in range(32)]
        scale = torch.ones(len(sizes), s, device="cuda", dtype=dtype)
        x = torch.randn(m, fan_in, device="cuda", dtype=dtype)
        it = iter(range(10**9))

        def plain(weights=weights, x=x, n=n, it=it):
            torch.nn.functional.linear(x, weights[next(it) % 32][:n])

        def stacked(weights=weights, x=x, it=it):
            torch.nn.functional.linear(x, weights[next(it) % 32])

        row = {"plain_us": graph_time(plain), "with_A_us": graph_time(stacked)}
        both = torch.nn.functional.linear(x, weights[0])
        for block_n in (64, 128, 256):
            for warps in (2, 4, 8):

                def expand(both=both, bs=bs, it=it, n=n, starts=starts, block_n=block_n, warps=warps, scale=scale):
                    add_lora_grouped(both[:, :n], both[:, n:], bs[next(it) % 32], scale, slots, starts, block_n, warps)

                row[f"expand_n{block_n}_w{warps}_us"] = graph_time(expand)
        total[name] = row
        del weights, bs
        torch.cuda.empty_cache()
        print(name, {k: round(v, 1) for k, v in row.items()}, flush=True)
    keys = next(iter(total.values())).keys()
    print("per layer (us):", {k: round(sum(row[k] for row in total.values()), 1) for k in keys})


if __name__ == "__main__":
    main()
