"""``ttdist plan``: will a model fit on a system, how many users at what context, how fast."""

from __future__ import annotations

import argparse
import json

from ttdist.cli import EXIT_USAGE, CommandError

GiB = 2**30


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="size a model on a system: memory per chip, users, tokens/s (no hardware needed)",
        description="Capacity plan for a Llama model on a Tenstorrent system: per-chip DRAM for weights, KV "
                    "cache and activations from the model's own tensor-parallel layout, the users that fit at "
                    "a context, and a roofline prediction of decode tokens/s per user, time to first token and "
                    "cluster throughput. Constants and their sources: docs/tools.md.",
        epilog="examples:\n  ttdist plan llama-3.1-70b --system tg\n"
               "  ttdist plan llama-3.1-70b --load rate=20,input=1024,output=256 --slo ttft=500ms,tpot=50ms\n"
               "  ttdist plan llama-3.1-8b --system n150 --batch 32 --context 4096 --json\n"
               "  ttdist plan ./my-llama/config.json --system 4xtg --precision accuracy",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="llama-3.1-8b, llama-3.1-70b, llama-3.2-1b, llama-3.2-3b, smollm2, "
                                 "or a Hugging Face config.json (file or directory)")
    p.add_argument("--system", default=None,
                   help="n150, n300, t3k, tg, an RxC mesh, or N of them such as 4xtg (default n300; with --load: "
                        "a comma-separated list of systems to consider, default n150,n300,t3k,tg)")
    p.add_argument("--precision", default=None,
                   help="performance (bfp8 attention, FF2, LM head and KV cache, bfp4 FF1/FF3), accuracy "
                        "(bf16 attention and KV cache, bfp8 MLP), or one dtype for every matmul weight such as "
                        "bfloat8_b (default performance; with --load: both presets unless one is given)")
    p.add_argument("--kv-dtype", help="KV cache dtype, overriding the preset's")
    p.add_argument("--batch", type=int, default=32, help="decode users per replica (default %(default)s)")
    p.add_argument("--context", type=int, default=128, help="positions each user attends over (default %(default)s)")
    p.add_argument("--input-len", type=int, default=128, help="prompt length for TTFT (default %(default)s)")
    p.add_argument("--prefill-chunk", type=int, help="prefill chunk length (default: the whole prompt)")
    p.add_argument("--replicas", type=int, help="replicas in the cluster (default: one per system)")
    p.add_argument("--page-size", type=int, default=32, help="KV page size in positions (default %(default)s)")
    p.add_argument("--prefetch", choices=("auto", "on", "off"), default="auto",
                   help="overlap weight streaming with the rest of a decode step (auto: on for 2D meshes, "
                        "as tt-metal's Galaxy demo does)")
    p.add_argument("--implementation", default="auto",
                   help="whose implementation to time: auto (the Galaxy demo on 2D meshes, tt_transformers on 1xN), "
                        "galaxy-demo, or tt-transformers (on a 2D mesh: its generic Galaxy path)")
    p.add_argument("--sampling", default="device",
                   help="device (sampled on the mesh, as ttdist does) or host (every user's logits read back each "
                        "step, as tt_transformers' demo did at batch > 1 before it sampled on the device)")
    p.add_argument("--load", help="size a fleet for this load: rate=REQ_PER_S,input=TOKENS,output=TOKENS "
                                  "(Poisson arrivals)")
    p.add_argument("--load-file", help="the load as a JSON file: {\"rate\": 20, \"input\": 1024, \"output\": 256}")
    p.add_argument("--slo", help="with --load: p90 targets such as ttft=500ms,tpot=50ms (units us, ms, s)")
    p.add_argument("--top", type=int, default=8, help="with --load: configurations to list (default %(default)s)")
    p.add_argument("--kv-host-bytes", default="64GiB", metavar="SIZE",
                   help="host memory per replica for its KV tier: the plan says how many more users' KV it holds "
                        "(default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=run)


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def format_plan(p) -> str:
    m, d, f = p.memory, p.decode, p.prefill
    mesh = p.system.mesh
    lines = [
        f"{p.model} on {p.system.name} ({mesh.shape_str}, {mesh.num_chips} chips per replica), precision {p.precision.name}",
        f"layout: {p.layout}",
        "",
        "memory per chip",
        f"  DRAM              {_gib(m.dram_per_chip)}",
        f"  weights           {_gib(m.weights)}",
        f"  activations       {m.activations / 2**20:.2f} MiB",
        f"  reserve           {_gib(m.reserve)} (trace region {m.trace_region / 2**20:.0f} MiB, collective buffers "
        f"{m.ccl_buffers / 2**20:.0f} MiB)",
        f"  KV page           {m.kv_page / 2**20:.2f} MiB ({p.context} positions per user: {m.kv_per_user / 2**20:.1f} MiB)",
        f"  KV pages          {m.kv_pages:,}",
        f"  max users         {m.max_users:,} at context {p.context}",
        "",
        f"decode (batch {p.users}, context {p.context}, {'prefetched' if d.prefetch else 'serial'}, "
        f"timed as {p.kernels.name} runs it)",
        f"  step              {d.total_s * 1e3:.2f} ms",
        f"    weights         {d.weights_s * 1e3:.2f} ms ({d.weight_bytes / 2**30:.2f} GiB per chip)",
        f"    matmul compute  {d.matmul_compute_s * 1e3:.2f} ms",
        f"    KV cache        {d.kv_cache_s * 1e3:.2f} ms",
        f"    collectives     {(d.ccl_transfer_s + d.ccl_latency_s) * 1e3:.2f} ms ({d.num_collectives} per step, "
        f"{d.ccl_transfer_s * 1e3:.2f} transfer + {d.ccl_latency_s * 1e3:.2f} hops)",
        f"    other ops       {d.ops_s * 1e3:.2f} ms",
        f"    dispatch        {d.dispatch_s * 1e3:.2f} ms ({d.num_ops} ops)",
        f"    host reads      {d.host_s * 1e3:.2f} ms (sampling on the {p.sampling})",
        f"  tokens/s/user     {p.tokens_per_s_per_user:.1f}",
        f"  TTFT              {f.total_s * 1e3:.1f} ms (input {p.input_len} in chunks of {m.prefill_chunk})",
        "",
        f"throughput          {p.replica_tokens_per_s:,.0f} tokens/s per replica, "
        f"{p.cluster_tokens_per_s:,.0f} tokens/s for {p.replicas} replica{'s' if p.replicas != 1 else ''}",
    ]
    if p.users < p.batch:
        lines.append(f"note: only {p.users} of {p.batch} users fit at context {p.context}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ttdist.planner import PlanError, plan

    prefetch = {"auto": None, "on": True, "off": False}[args.prefetch]
    try:
        if args.load or args.load_file:
            return _fleet(args)
        p = plan(args.model, args.system or "n300", precision=args.precision or "performance", batch=args.batch,
                 context=args.context, input_len=args.input_len, replicas=args.replicas, page_size=args.page_size,
                 prefill_chunk=args.prefill_chunk, kv_dtype=args.kv_dtype, prefetch=prefetch,
                 implementation=args.implementation, sampling=args.sampling)
    except PlanError as e:
        raise CommandError(f"--{e.field}: {e.message}" if e.field != "model" else f"model: {e.message}",
                           EXIT_USAGE) from None
    tier = _host_tier(p, args)
    print(json.dumps({**p.to_json(), "kv_host_tier": tier.to_json()}) if args.json
          else format_plan(p) + "\n" + _format_host_tier(tier, p.context))
    return 0


def _host_tier(p, args: argparse.Namespace):
    """The replica's host KV tier of ``--kv-host-bytes`` (``ttdist.planner.kv_host``)."""
    from ttdist.engine.kv_tiers.config import KvTierSizeError, parse_size
    from ttdist.model.layout import Layout
    from ttdist.planner.catalog import resolve_model
    from ttdist.planner.kv_host import host_tier

    try:
        size = parse_size(args.kv_host_bytes)
    except KvTierSizeError as err:
        raise CommandError(f"--kv-host-bytes: {err}", EXIT_USAGE) from None
    layout = Layout(resolve_model(args.model)[1], p.system.mesh)
    return host_tier(layout, p.precision.kv_cache, context=p.context, page_size=args.page_size, host_bytes=size)


def _format_host_tier(tier, context: int) -> str:
    return (f"host KV tier        {tier.users:,} more users' KV at context {context} in {tier.host_bytes / 2**30:.0f} GiB "
            f"of host memory ({tier.page_bytes / 2**20:.2f} MiB per page): restored, not prefilled again")


def _fleet(args: argparse.Namespace) -> int:
    from ttdist.planner import PlanError, resolve_model
    from ttdist.planner.fleet import PRECISIONS, SYSTEMS, load_file, parse_load, parse_slo, size_fleet

    if args.load and args.load_file:
        raise PlanError("load", "give --load or --load-file, not both")
    load = parse_load(args.load) if args.load else load_file(args.load_file)
    if not args.slo:
        raise PlanError("slo", "a fleet is sized for an SLO: add --slo ttft=500ms,tpot=50ms")
    slo = parse_slo(args.slo)
    config = resolve_model(args.model)[1]
    if load.input + load.output > config.max_position_embeddings:
        raise PlanError("load", f"input + output = {load.input + load.output} is beyond the model's "
                                f"{config.max_position_embeddings} positions")
    systems = tuple(s.strip() for s in args.system.split(",")) if args.system else SYSTEMS
    precisions = (args.precision,) if args.precision else PRECISIONS
    options = size_fleet(args.model, load, slo, systems=systems, precisions=precisions)
    if args.json:
        print(json.dumps({"load": vars(load), "slo": slo.to_json(), "options": [o.to_json() for o in options]}))
        return 0
    print(format_fleet(args.model, load, slo, options[:max(1, args.top)]))
    return 0


def format_fleet(model: str, load, slo, options) -> str:
    def ms(x):
        return f"{x * 1e3:.0f}" if x is not None else "-"
    lines = [f"{model}: {load.rate:g} requests/s (Poisson), input {load.input}, output {load.output}; "
             f"SLO p90 TTFT {ms(slo.ttft_s)} ms, p90 TPOT {ms(slo.tpot_s)} ms", ""]
    if not options:
        return "\n".join(lines + ["no configuration meets the SLO (an idle replica is already too slow)"])
    lines.append(f"{'system':8}{'precision':13}{'batch':>6}{'replicas':>9}{'chips':>7}  {'TTFT p50/p90 ms':>16}"
                 f"  {'TPOT p50/p90 ms':>16}  {'saturates at':>12}")
    for o in options:
        lat = o.latency
        lines.append(f"{o.plan.system.mesh.name:8}{o.plan.precision.name:13}{o.service.batch:>6}"
                     f"{o.service.replicas:>9}{o.chips:>7}  {ms(lat.ttft_p50):>7} / {ms(lat.ttft_p90):<6}"
                     f"  {lat.tpot_p50 * 1e3:>7.1f} / {lat.tpot_p90 * 1e3:<6.1f}  {o.saturation_rate:>8.1f} req/s")
    return "\n".join(lines)
