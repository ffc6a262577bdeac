#!/usr/bin/env python3
"""A PyTorch reference of MoESim's training step, built the way DeepSpeed builds its MoE layer.

Not a build or test dependency (Debian python3-torch). Per rank: input projection -> MoE layer
(router Linear, fp32 softmax, top-k gating with a capacity C = ceil(k S cf / E) per expert,
index dispatch into an [E, C, d] buffer padded to capacity, gloo all-to-all, the local experts
as batched FFNs, all-to-all back, weighted combine, residual) -> 2-class head -> cross-entropy;
backward by autograd; the replicated gradients (projection, router, head) allreduced; Adam.
One thread per process (torch.set_num_threads(1)); run it on as many processes as MoESim's ranks:

  mpirun -n 2 python3 tools/pytorch_reference.py [--bf16] [--steps 12]

(`mpirun` only launches the processes; torch talks through gloo over TCP. --bf16 runs the
forward under torch.autocast("cpu", torch.bfloat16), tokens crossing the all-to-all as bf16.)
Prints one line: median step time (max over ranks) over the steps after 2 warm-up steps.
OpenBLAS: this workplace sets OPENBLAS_CORETYPE=Haswell, which halves OpenBLAS on AVX-512
machines; unset it for this command only (`env -u OPENBLAS_CORETYPE mpirun ...`).
"""
import argparse
import math
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F


class AllToAll(torch.autograd.Function):
    """DeepSpeed's _AllToAll: the backward of an all-to-all is the same all-to-all."""

    @staticmethod
    def forward(ctx, x):
        return _a2a(x)

    @staticmethod
    def backward(ctx, g):
        return _a2a(g.contiguous())


def _a2a(x):
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.dtype == torch.bfloat16:  # gloo has no bf16: move the same 2-byte words as fp16
        dist.all_to_all_single(out.view(torch.float16), x.view(torch.float16))
    else:
        dist.all_to_all_single(out, x)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--cf", type=float, default=1.25)
    ap.add_argument("--tokens", type=int, default=4096, help="global tokens per step")
    ap.add_argument("--input-dim", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--port", type=int, default=29541)
    a = ap.parse_args()

    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", 0)))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=rank,
                            world_size=world)
    torch.manual_seed(1234 + rank)
    E, P, d, f, k = a.experts, world, a.d_model, a.d_ff, a.k
    El = E // P
    S = a.tokens // P
    C = math.ceil(k * S * a.cf / E)

    proj = torch.nn.Linear(a.input_dim, d)
    gate = torch.nn.Linear(d, E, bias=False)
    head = torch.nn.Linear(d, 2)
    w1 = torch.nn.Parameter(torch.randn(El, d, f) * math.sqrt(2 / d))
    b1 = torch.nn.Parameter(torch.zeros(El, 1, f))
    w2 = torch.nn.Parameter(torch.randn(El, f, d) * math.sqrt(1 / f))
    b2 = torch.nn.Parameter(torch.zeros(El, 1, d))
    replicated = list(proj.parameters()) + list(gate.parameters()) + list(head.parameters())
    params = replicated + [w1, b1, w2, b2]
    opt = torch.optim.Adam(params, lr=1e-3)

    def moe(x):
        logits = gate(x).float()
        probs = F.softmax(logits, dim=-1)                              # router in fp32
        topv, topi = probs.topk(k, dim=-1)                             # [S, k]
        # Capacity: position of each (token, choice) in its expert's queue, choice-major.
        mask = F.one_hot(topi.t().reshape(-1), E)                      # [k S, E]
        pos = (torch.cumsum(mask, 0) - 1)[mask.bool()]                 # [k S]
        expert = topi.t().reshape(-1)
        weight = topv.t().reshape(-1)
        token = torch.arange(S).repeat(k)
        keep = pos < C
        slot = expert[keep] * C + pos[keep]
        buf = x.new_zeros(E * C, d)
        buf = buf.index_copy(0, slot, x[token[keep]])                  # index dispatch
        buf = AllToAll.apply(buf.view(P, El * C, d)).view(P, El, C, d)
        h = buf.transpose(0, 1).reshape(El, P * C, d)
        h = torch.relu(torch.baddbmm(b1, h, w1))
        h = torch.baddbmm(b2, h, w2)                                   # [El, P C, d]
        h = h.view(El, P, C, d).transpose(0, 1).contiguous()
        out = AllToAll.apply(h.view(P, El * C, d)).view(E * C, d)
        y = x + torch.zeros_like(x).index_add(
            0, token[keep], out[slot] * weight[keep].unsqueeze(1).to(out.dtype))
        return y

    times = []
    for step in range(a.steps):
        xin = torch.randn(S, a.input_dim)
        lab = torch.randint(0, 2, (S,))
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            y = moe(proj(xin))
            z = head(y)
        loss = F.cross_entropy(z.float(), lab)
        loss.backward()
        flat = torch.cat([p.grad.reshape(-1) for p in replicated])
        dist.all_reduce(flat)
        off = 0
        for p in replicated:
            n = p.numel()
            p.grad.copy_(flat[off:off + n].view_as(p))
            off += n
        opt.step()
        t = torch.tensor([time.perf_counter() - t0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(t.item())
    med = statistics.median(times[2:])
    if rank == 0:
        print(f"pytorch_reference {'bf16-autocast' if a.bf16 else 'fp32'} ranks={P} E={E} "
              f"d_model={d} d_ff={f} tokens={a.tokens} k={k} cf={a.cf} C={C}: "
              f"step median {med * 1e3:.1f} ms over {len(times) - 2} steps "
              f"(torch {torch.__version__}, {torch.get_num_threads()} thread)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
