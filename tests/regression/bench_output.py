#!/usr/bin/python3
"""Regression: `moesim bench` runs for float32 and bfloat16 and prints its figures consistently.

Quick-start layer, 2 ranks, 1 warm-up + 3 timed iterations per precision. Checks (numbers, not speed:
the machine is shared): exit 0, deterministic output, the phase line (medians), the rate line with
the library rate and the measured FMA peak, and the ratio line where the expert phase's share of
the library rate is recomputed from the printed rates (the percentage must be expert/library of the
same line, both from medians), and the layer/GEMMs ratio equals fwd+bwd / gemm of the first line.
With routing.overlap_degree = 2: the overlap line (d against d = 1 in the same loop), its hidden
fraction and step gain recomputed from its printed times, and bitwise equal results.
"""
import os
import re
import sys

sys.dont_write_bytecode = True  # keep tests/regression free of __pycache__

from regtest import HERE, Regression

R = Regression(__doc__.splitlines()[0])
QUICKSTART = os.path.normpath(os.path.join(HERE, "..", "..", "experiments", "quickstart.ini"))
NUM = r"([0-9]+(?:\.[0-9]+)?)"

for prec in ["float32", "bfloat16"]:
    R.section(f"moesim bench, {prec}")
    res = R.mpirun(2, ["bench", QUICKSTART, "--bench.warmup=1", "--bench.iterations=3",
                       f"--model.precision={prec}"], timeout=120)
    if not R.check(res.rc == 0, f"{prec}: exit 0", res.describe):
        continue
    out = res.out
    m = re.search(rf"fwd\+bwd {NUM} ms \(gemm {NUM} ms, ratio {NUM}\).*deterministic yes", out)
    R.check(m is not None, f"{prec}: layer line with fwd+bwd, gemm, ratio, deterministic yes", out)
    layer = tuple(float(v) for v in m.groups()) if m else None
    m = re.search(rf"bench phases \(ms per fwd\+bwd iteration, max over ranks, median\): gate {NUM} "
                  rf"dispatch {NUM} expert {NUM} combine {NUM} backward {NUM}", out)
    R.check(m is not None and all(float(v) >= 0 for v in m.groups()) and float(m.group(3)) > 0,
            f"{prec}: phase line (medians), expert phase > 0", out)
    m = re.search(rf"bench {prec}: step .* library GEMMs at the same shapes {NUM} GFLOP/s per rank "
                  rf"\(fwd {NUM}\) \| FMA peak {NUM} GFLOP/s per core", out)
    R.check(m is not None and float(m.group(3)) > 0, f"{prec}: rate line with the library rate and a "
            "measured FMA peak > 0", out)
    m = re.search(rf"bench ratios {prec}: expert phase {NUM} GFLOP/s per rank = {NUM}% of the library's "
                  rf"{NUM} \(target >= 85%; {NUM}% of the (FMA|bf16 dot) peak {NUM}\) \| layer / GEMMs "
                  rf"{NUM} fwd\+bwd", out)
    if R.check(m is not None, f"{prec}: ratio line (expert phase, library rate, peak, layer/GEMMs)", out):
        expert, pct, lib, pct_peak, peak_kind, peak, ratio = m.groups()
        expert, pct, lib, pct_peak, peak, ratio = map(float, (expert, pct, lib, pct_peak, peak, ratio))
        R.check(lib > 0 and abs(pct - 100 * expert / lib) <= 0.5 + 0.01 * pct,
                f"{prec}: expert share {pct:.0f}% = expert {expert} / library {lib} of the same line")
        R.check(peak > 0 and abs(pct_peak - 100 * expert / peak) <= 0.5 + 0.01 * pct_peak,
                f"{prec}: expert share of the {peak_kind} peak {pct_peak:.0f}% = {expert} / {peak}")
        want_kind = "bf16 dot" if prec == "bfloat16" and "avx512_bf16 yes" in out else "FMA"
        R.check(peak_kind == want_kind, f"{prec}: compared with the {want_kind} peak ({peak_kind})")
        if layer:
            # the times are printed to 0.01 ms: allow that rounding
            tol = ratio * (0.005 / layer[0] + 0.005 / layer[1]) + 1e-3
            R.check(abs(ratio - layer[0] / layer[1]) <= tol,
                    f"{prec}: layer/GEMMs {ratio} = fwd+bwd {layer[0]} / gemm {layer[1]}")

R.section("moesim bench --routing.overlap_degree=2 (the pipeline against d = 1 in the same loop)")
res = R.mpirun(2, ["bench", QUICKSTART, "--bench.warmup=1", "--bench.iterations=3",
                   "--routing.num_experts=8", "--routing.overlap_degree=2"], timeout=120)
if R.check(res.rc == 0, "overlap: exit 0", res.describe):
    m = re.search(rf"bench overlap d=2 .*: step {NUM} vs {NUM} \| exchange {NUM} of {NUM} not hidden \| "
                  rf"expert compute \(d=1\) {NUM} \| hidden (-?[0-9]+)% of the exchange \(step gain "
                  rf"(-?[0-9]+)%\) \| bitwise yes", res.out)
    if R.check(m is not None, "overlap line with both steps, both exchange times, bitwise yes", res.out):
        stepd, step1, exd, ex1, _, hidden, gain = m.groups()
        stepd, step1, exd, ex1 = map(float, (stepd, step1, exd, ex1))
        # Printed to 0.01 ms and whole percent: the percentages must lie in the range the
        # printed times allow (each time within +-0.005).
        def span(f):
            e = 0.005
            vals = [f(a, b, c, x) for a in (stepd - e, stepd + e) for b in (step1 - e, step1 + e)
                    for c in (exd - e, exd + e) for x in (max(ex1 - e, 1e-9), ex1 + e)]
            return min(vals) - 0.5, max(vals) + 0.5
        lo, hi = span(lambda a, b, c, x: 100 * (1 - c / x))
        R.check(lo <= float(hidden) <= hi, f"hidden {hidden}% = 1 - {exd} / {ex1}")
        lo, hi = span(lambda a, b, c, x: 100 * (b - a) / x)
        R.check(lo <= float(gain) <= hi, f"step gain {gain}% = ({step1} - {stepd}) / {ex1}")
res = R.mpirun(2, ["bench", QUICKSTART, "--bench.warmup=1", "--bench.iterations=3"], timeout=120)
R.check(res.rc == 0 and "bench overlap" not in res.out, "no overlap line at d = 1", res.describe)

R.finish()
