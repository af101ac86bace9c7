#!/usr/bin/env python3
"""PerceptionLM throughput on a GPU (or, for a dry run, the CPU), batched like a GPU worker:
vidx's candle port against the reference transformers implementation, same random-weight
checkpoint, same shapes, same device, one after the other in this one script. Not a test.

Defaults are Perception-LM-1B's shapes with random weights:

    vision  PE-L as PLM-1B uses it: 23 layers x 1024 wide, 16 heads, MLP 4096, CLS token,
            448 px frames, patch 14 -> 32x32 grid, 2x2 pooling -> 256 tokens per frame
    LLM     Llama 3.2 1B: 16 layers x 2048, 32 heads, 8 KV heads, MLP 8192, vocab 128256,
            llama3 rope scaling, tied embeddings
    work    32 frames per segment (one 20 s segment), batches of 1, 8 and 32 segments,
            --new-tokens generated greedily per segment

Per batch size and side: the vision tower over all batch x frames frames (in chunks of
--vision-chunk frames, the same on both sides), the prefill of the batch's video prompts with the
visual tokens spliced in (8.2k tokens each), then greedy decoding with the KV cache. Reported:
vision frames/s, prefill tokens/s, decode tokens/s (batch x steps / s), segments/s and the
multiple of real time (segments/s x --segment-secs). Each side runs one untimed warm-up, then
--repeats timed runs (best counts). A batch size that runs out of memory is recorded as such.

    python3 scripts/bench_plm_device.py --candle-bin PATH [--device cuda] [--dtype bf16]
        [--batches 1,8,32] [--frames 32] [--new-tokens 32] [--json FILE] ...
    # the small CPU dry run that checks the script end to end:
    python3 scripts/bench_plm_device.py --candle-bin PATH --device cpu --small

Normally run through scripts/bench-plm-gpu.sh, which builds the candle binary with CUDA.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import PerceptionLMForConditionalGeneration  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_plm  # noqa: E402  (prompt_ids, kv_cache, versions)
import make_plm_fixtures as fixtures  # noqa: E402

ROOT = fixtures.ROOT
HEAD_DIM = 64
POOLING = 2
SEED = 4242


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", choices=["bf16", "f32"], help="default: bf16 on a GPU, f32 on the CPU")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes (segments)")
    p.add_argument("--frames", type=int, default=32, help="frames per segment")
    p.add_argument("--segment-secs", type=float, default=20.0, help="media seconds per segment")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--vision-layers", type=int, default=23)
    p.add_argument("--vision-width", type=int, default=1024)
    p.add_argument("--llm-layers", type=int, default=16)
    p.add_argument("--llm-hidden", type=int, default=2048)
    p.add_argument("--llm-kv-heads", type=int, default=8)
    p.add_argument("--llm-mlp", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=128256, help="LLM vocabulary (the lm_head size)")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--vision-chunk", type=int, default=32, help="frames per vision-tower call")
    p.add_argument("--small", action="store_true",
                   help="a small config for a CPU dry run (2x128 vision at 112 px, 2x256 LLM, 4 frames, batches 1,2)")
    p.add_argument("--candle-bin", type=pathlib.Path, help="plm_bench built with the cuda feature")
    p.add_argument("--skip-candle", action="store_true")
    p.add_argument("--profile-batches", default="1,32",
                   help="after the timed runs, candle once more per batch size with VIDX_PROFILE=1: "
                        "time per stage (each stage synchronised, so slower than the timed runs); empty: none")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-micro", action="store_true",
                   help="skip the single-operation timings (candle beside PyTorch; GPU only)")
    p.add_argument("--time-budget", type=float, default=420.0,
                   help="seconds: no new batch size is started after this (the run must fit a 10 min slot)")
    p.add_argument("--out", type=pathlib.Path, help="keep the checkpoint here (default: a temp dir)")
    p.add_argument("--json", type=pathlib.Path, default=ROOT / "target/bench-plm-device.json")
    a = p.parse_args()
    if a.small:
        a.vision_layers, a.vision_width, a.llm_layers, a.llm_hidden = 2, 128, 2, 256
        a.llm_kv_heads, a.llm_mlp, a.vocab, a.image_size, a.frames = 2, 512, 1024, 112, 4
        a.batches, a.new_tokens, a.vision_chunk, a.profile_batches = "1,2", 8, 4, "2"
    a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    a.profile_batches = [int(b) for b in a.profile_batches.split(",") if b.strip()]
    a.dtype = a.dtype or ("f32" if a.device == "cpu" else "bf16")
    if not a.skip_candle and (a.candle_bin is None or not a.candle_bin.is_file()):
        p.error(f"--candle-bin {a.candle_bin}: not a file (build it with scripts/bench-plm-gpu.sh build)")
    if a.vision_width % HEAD_DIM or a.llm_hidden % HEAD_DIM:
        p.error(f"--vision-width and --llm-hidden must be multiples of {HEAD_DIM}")
    if a.image_size % (fixtures.PATCH * POOLING):
        p.error(f"--image-size must be a multiple of {fixtures.PATCH * POOLING}")
    return a


def spec(a):
    heads = a.llm_hidden // HEAD_DIM
    return dict(
        seed=SEED,
        embed_std=0.5,
        vision_arch="vit_pe_core_large_patch14_336",
        vision_use_cls_token=True,
        vision=dict(embed_dim=a.vision_width, depth=a.vision_layers, num_heads=a.vision_width // HEAD_DIM),
        text=dict(hidden_size=a.llm_hidden, intermediate_size=a.llm_mlp, num_hidden_layers=a.llm_layers,
                  num_attention_heads=heads, num_key_value_heads=a.llm_kv_heads, head_dim=HEAD_DIM),
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        tie_word_embeddings=True,
    )


def torch_dtype(a):
    return torch.bfloat16 if a.dtype == "bf16" else torch.float32


def write_checkpoint(a, s, tokenizer, out_dir):
    """Random checkpoint in the HF layout, saved in the benchmark's dtype; returns the parameter count."""
    torch.manual_seed(SEED)
    config = fixtures.build_config(s, tokenizer, tile=a.image_size, max_pos=131072)
    config.text_config.vocab_size = max(a.vocab, len(tokenizer))
    with torch.device("cpu"):
        model = PerceptionLMForConditionalGeneration(config).eval()
    fixtures.init_weights(model, SEED, s["embed_std"])
    params = sum(p.numel() for p in model.parameters())
    model.to(torch_dtype(a)).save_pretrained(out_dir)
    del model
    fixtures.build_processor(tokenizer, tile=a.image_size).save_pretrained(out_dir)
    fixtures.legacy_rope_layout(out_dir / "config.json", s)
    return params


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_kwarg(lm):
    """The decoder's cache argument: `cache` in transformers 5.2x, `past_key_values` before."""
    import inspect
    names = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


@torch.inference_mode()
def reference_run(a, model, tokenizer, per_frame, batch, device):
    core, lm = model.model, model.model.language_model
    dtype = torch_dtype(a)
    gen = torch.Generator(device=device).manual_seed(SEED)
    frames = batch * a.frames
    pixels = (torch.rand((frames, 3, a.image_size, a.image_size), generator=gen, device=device) * 2 - 1).to(dtype)
    ids = bench_plm.prompt_ids(tokenizer, model.config, a.frames, per_frame).to(device).repeat(batch, 1)
    video_mask = ids == model.config.video_token_id
    kwarg = cache_kwarg(lm)

    sync(device)
    t0 = time.perf_counter()
    visual = torch.cat([core.get_image_features(pixel_values=pixels[i:i + a.vision_chunk][None]).pooler_output
                        for i in range(0, frames, a.vision_chunk)])  # [frames, per_frame, D]
    sync(device)
    t1 = time.perf_counter()
    embeds = core.get_input_embeddings()(ids)
    embeds = embeds.masked_scatter(video_mask[..., None], visual.reshape(-1, visual.shape[-1]).to(embeds.dtype))
    out = lm(inputs_embeds=embeds, use_cache=True)
    token = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
    sync(device)
    t2 = time.perf_counter()
    cache = bench_plm.kv_cache(out)
    for _ in range(a.new_tokens - 1):
        out = lm(input_ids=token, use_cache=True, **{kwarg: cache})
        cache = bench_plm.kv_cache(out)
        token = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
    sync(device)
    t3 = time.perf_counter()
    assert cache.get_seq_length() == ids.shape[1] + a.new_tokens - 1, cache.get_seq_length()
    return dict(vision_secs=t1 - t0, prefill_secs=t2 - t1, decode_secs=t3 - t2, prompt_tokens=ids.numel())


def rates(a, batch, r):
    steps = a.new_tokens - 1
    batch_secs = r["vision_secs"] + r["prefill_secs"] + (r["decode_secs"] if steps else 0.0)
    segments = batch / batch_secs
    return dict(r, batch=batch, batch_secs=batch_secs,
                vision_frames_per_s=batch * a.frames / r["vision_secs"],
                prefill_tokens_per_s=r["prompt_tokens"] / r["prefill_secs"],
                decode_tokens_per_s=batch * steps / r["decode_secs"] if steps else None,
                segments_per_s=segments, x_realtime=segments * a.segment_secs)


def out_of_memory(error):
    text = str(error).lower()
    return "out of memory" in text or "out_of_memory" in text or "alloc_failed" in text


def time_reference(a, model, tokenizer, per_frame, batch, device):
    best = None
    try:
        for run in range(1 + a.repeats):
            r = reference_run(a, model, tokenizer, per_frame, batch, device)
            print(f"  reference batch {batch} run {run}: vision {r['vision_secs']:.3f}s prefill "
                  f"{r['prefill_secs']:.3f}s decode {r['decode_secs']:.3f}s{' (warm-up)' if run == 0 else ''}",
                  file=sys.stderr, flush=True)
            if run > 0:
                best = r if best is None else {k: min(best[k], v) if k.endswith("_secs") else v for k, v in r.items()}
    except torch.OutOfMemoryError as error:
        return {"batch": batch, "error": f"out of memory: {str(error).splitlines()[0]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = rates(a, batch, best)
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return result


def check_attention(a):
    """The fused attention kernel against f32 tensor ops on the same device (plm_bench
    --check-attention). When it is off by more than the tolerance, the candle runs go on with
    the kernel turned off (VIDX_FUSED_KERNELS=0), so the figures are still right."""
    tolerance = "0.05" if a.dtype in ("bf16", "f16") else "1e-4"
    cmd = [str(a.candle_bin), "--check-attention", tolerance, "--device", a.device, "--dtype", a.dtype]
    print("  " + " ".join(cmd), file=sys.stderr, flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RUST_BACKTRACE="0"))
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"ok": False}
    if run.returncode != 0:
        result["ok"] = False
        result["error"] = (run.stderr or run.stdout).strip().splitlines()[-3:]
    print(f"  attention check: {json.dumps(result)}", file=sys.stderr, flush=True)
    if not result.get("ok"):
        os.environ["VIDX_FUSED_KERNELS"] = "0"
        print("  the fused attention failed its check: candle runs with VIDX_FUSED_KERNELS=0",
              file=sys.stderr, flush=True)
    result["candle_runs_fused"] = os.environ.get("VIDX_FUSED_KERNELS", "1") != "0"
    return result


MICRO_FLOPS = {
    "attention_prefill_8192_causal": 4.0 * 64 * 32 * (8192 * 8193 // 2),
    "attention_vision_32x1025": 4.0 * 64 * 32 * 16 * 1025 * 1025,
    "attention_decode_32x8192": 4.0 * 64 * 32 * 32 * 8192,
    "linear_32800x1024x4096_bias": 2.0 * 32800 * 1024 * 4096,
    "matmul_32800x1024x4096": 2.0 * 32800 * 1024 * 4096,
    "linear_gelu_32800x1024x4096": 2.0 * 32800 * 1024 * 4096,
}


def micro(a, device):
    """Single operations in PLM-1B's shapes, candle (plm_bench --micro) beside PyTorch on the
    same GPU: where the candle side loses time. Mean of 10 runs after one each."""
    cmd = [str(a.candle_bin), "--micro", "1", "--device", a.device, "--dtype", a.dtype]
    print("  " + " ".join(cmd), file=sys.stderr, flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RUST_BACKTRACE="0"))
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    candle = {op["op"]: op["ms"] for op in json.loads(lines[-1])["ops"]} if lines else {}
    if run.returncode != 0:
        print((run.stderr or run.stdout).strip()[-600:], file=sys.stderr)
    dt = torch_dtype(a)
    F = torch.nn.functional

    def timed(fn):
        fn()
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(10):
            fn()
        torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / 10 * 1e3

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dt)

    reference = {}
    with torch.inference_mode():
        q, k, v = randn(1, 32, 8192, 64), randn(1, 8, 8192, 64), randn(1, 8, 8192, 64)
        reference["attention_prefill_8192_causal"] = timed(
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        q, k, v = randn(32, 32, 1, 64), randn(32, 8, 8192, 64), randn(32, 8, 8192, 64)
        reference["attention_decode_32x8192"] = timed(
            lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        q, k, v = randn(32, 16, 1025, 64), randn(32, 16, 1025, 64), randn(32, 16, 1025, 64)
        reference["attention_vision_32x1025"] = timed(lambda: F.scaled_dot_product_attention(q, k, v))
        del q, k, v
        x, w, b = randn(32800, 1024), randn(4096, 1024), randn(4096)
        y = x @ w.t()
        reference["linear_32800x1024x4096_bias"] = timed(lambda: F.linear(x, w, b))
        reference["matmul_32800x1024x4096"] = timed(lambda: x @ w.t())
        reference["bias_add_32800x4096"] = timed(lambda: y + b)
        reference["add_32800x4096"] = timed(lambda: y + y)
        reference["gelu_erf_32800x4096"] = timed(lambda: F.gelu(y))
        reference["linear_gelu_32800x1024x4096"] = timed(lambda: F.gelu(F.linear(x, w, b)))
        reference["bias_gelu_32800x4096"] = timed(lambda: F.gelu(y + b))
        qkv = randn(32, 1025, 3, 16, 64)
        angles = torch.randn(1025, 32, device=device) * 3
        cos, sin = (t.to(dt)[None, :, None, None, :] for t in (angles.cos(), angles.sin()))

        def rope():
            x = qkv[:, :, :2]
            x0, x1 = x[..., 0::2], x[..., 1::2]
            return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2)
        reference["rope_qk_32x1025"] = timed(rope)
        del qkv
        wn, bn = randn(1024), randn(1024)
        reference["layer_norm_32800x1024"] = timed(lambda: F.layer_norm(x, (1024,), wn, bn))
        del x, w, b, y
        stacked = randn(8192, 2 * 8192)
        reference["swiglu_8192x8192"] = timed(lambda: F.silu(stacked[:, :8192]) * stacked[:, 8192:])
        del stacked
    torch.cuda.empty_cache()
    rows = []
    for name, ref_ms in reference.items():
        for suffix in ("_fused", "_mma", "_wmma", "_vidx", "_tensor_ops", ""):
            ms = candle.get(name + suffix)
            if ms is None:
                continue
            flops = MICRO_FLOPS.get(name)
            rows.append({"op": name + suffix, "candle_ms": ms, "reference_ms": ref_ms,
                         "ratio": ref_ms / ms,
                         "candle_tflops": flops / ms / 1e9 if flops else None,
                         "reference_tflops": flops / ref_ms / 1e9 if flops else None})
    for row in rows:
        tf = (f"  ({row['candle_tflops']:.0f} vs {row['reference_tflops']:.0f} TFLOP/s)"
              if row["candle_tflops"] else "")
        print(f"  micro {row['op']}: candle {row['candle_ms']:.3f} ms, torch {row['reference_ms']:.3f} ms, "
              f"ratio {row['ratio']:.2f}{tf}", file=sys.stderr, flush=True)
    return rows


def time_candle(a, model_dir, work, batch, profile=False):
    out = work / f"candle-{batch}{'-profile' if profile else ''}.json"
    # Prefill chunk: whole prompts at batch 1, shorter chunks for big batches, so the score
    # matrices of one chunk stay a few GB.
    chunk = max(256, min(16384, 16384 // batch))
    cmd = [str(a.candle_bin), "--model-dir", str(model_dir), "--device", a.device, "--dtype", a.dtype,
           "--frames", str(a.frames), "--batch", str(batch), "--new-tokens", str(a.new_tokens),
           "--repeats", "1" if profile else str(a.repeats), "--warmup", "1", "--vision-batch", str(a.vision_chunk),
           "--prefill-chunk", str(chunk), "--segment-secs", str(a.segment_secs), "--json", str(out)]
    print("  " + " ".join(cmd), file=sys.stderr, flush=True)
    env = dict(os.environ, RUST_BACKTRACE="0", VIDX_PROFILE="1" if profile else "0")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        text = (run.stderr or run.stdout).split("Stack backtrace")[0].strip()
        print(text, file=sys.stderr)
        lines = [line.strip() for line in text.splitlines() if line.strip()][-4:]
        return {"batch": batch, "error": ("out of memory: " if out_of_memory(run.stderr) else "") + " | ".join(lines)}
    return json.loads(out.read_text())


def table(rows):
    keys = ("vision_frames_per_s", "prefill_tokens_per_s", "decode_tokens_per_s", "segments_per_s", "x_realtime")
    head = ["batch", "side"] + [k.replace("_per_s", "/s") for k in keys]
    lines = [head]
    for batch, sides in rows:
        for side in ("candle", "reference", "ratio"):
            r = sides.get(side)
            if r is None:
                continue
            if "error" in r:
                lines.append([str(batch), side, r["error"][:60]])
                continue
            lines.append([str(batch), side] + [f"{r[k]:.2f}" if r.get(k) is not None else "-" for k in keys])
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)) for line in lines)


def main():
    a = parse_args()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    device = torch.device(a.device)
    s = spec(a)
    per_frame = (a.image_size // fixtures.PATCH // POOLING) ** 2
    tokenizer = fixtures.build_tokenizer()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-plm-device-") as tmp:
        work = pathlib.Path(tmp)
        model_dir = a.out or work / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        params = write_checkpoint(a, s, tokenizer, model_dir)
        print(f"wrote a {params / 1e6:.1f}M-parameter random PLM ({a.dtype}) in "
              f"{time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        attention = None if a.skip_candle else check_attention(a)
        micro_rows = micro(a, device) if device.type == "cuda" and not a.skip_candle and not a.skip_micro else None
        model = None
        if not a.skip_reference:
            if device.type == "cpu":
                torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1)))
            model = PerceptionLMForConditionalGeneration.from_pretrained(model_dir, dtype=torch_dtype(a)).to(device).eval()
        for batch in a.batches:
            if time.perf_counter() - started > a.time_budget:
                print(f"time budget spent: batch {batch} skipped", file=sys.stderr)
                rows.append((batch, {"candle": {"batch": batch, "error": "skipped: time budget"}}))
                continue
            print(f"batch {batch}:", file=sys.stderr, flush=True)
            sides = {}
            if model is not None:
                sides["reference"] = time_reference(a, model, tokenizer, per_frame, batch, device)
            if not a.skip_candle:
                sides["candle"] = time_candle(a, model_dir, work, batch)
            c, r = sides.get("candle"), sides.get("reference")
            if c and r and "error" not in c and "error" not in r:
                sides["ratio"] = {k: (c[k] / r[k] if c.get(k) and r.get(k) else None)
                                  for k in ("vision_frames_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",
                                            "segments_per_s", "x_realtime")}
            rows.append((batch, sides))
        profiles = []
        for batch in ([] if a.skip_candle else a.profile_batches):
            if time.perf_counter() - started > a.time_budget:
                break
            print(f"profile, batch {batch}:", file=sys.stderr, flush=True)
            result = time_candle(a, model_dir, work, batch, profile=True)
            profiles.append({"batch": batch, "stages": result.get("profile"), "error": result.get("error"),
                             "vision_secs": result.get("vision_secs"), "prefill_secs": result.get("prefill_secs"),
                             "decode_secs": result.get("decode_secs")})

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    report = {
        "device": a.device,
        "gpu": gpu,
        "cpu": bench_plm.cpu_name(),
        "dtype": a.dtype,
        "config": {"frames": a.frames, "segment_secs": a.segment_secs, "new_tokens": a.new_tokens,
                   "repeats": a.repeats, "image_size": a.image_size, "tokens_per_frame": per_frame,
                   "vision": s["vision"], "text": s["text"], "vocab": a.vocab, "parameters": params,
                   "vision_chunk": a.vision_chunk},
        "versions": bench_plm.versions(),
        "attention_check": attention,
        "micro": micro_rows,
        "batches": [{"batch": batch, **sides} for batch, sides in rows],
        "candle_profiles": profiles,
        "wall_secs": time.perf_counter() - started,
        "notes": "best of repeats after one warm-up per side; segments/s = batch / (vision + prefill + decode); "
                 "x_realtime = segments/s x segment_secs; decode tokens/s counts batch x (new_tokens - 1) steps",
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"PLM on {gpu or a.device} ({a.dtype}), {params / 1e6:.0f}M params, {a.frames} frames x {per_frame} "
          f"tokens per {a.segment_secs:g} s segment, {a.new_tokens} new tokens")
    if attention is not None:
        print(f"fused attention check: {json.dumps(attention.get('max_abs_diff'))}, ok={attention.get('ok')}, "
              f"candle runs fused: {attention.get('candle_runs_fused')}")
    print(table(rows))
    for row in micro_rows or []:
        print(f"micro {row['op']}: candle {row['candle_ms']:.3f} ms, torch {row['reference_ms']:.3f} ms, "
              f"ratio {row['ratio']:.2f}")
    for profile in profiles:
        stages = profile.get("stages") or []
        print(f"candle stages, batch {profile['batch']} (synchronised; vision {profile.get('vision_secs') or 0:.3f} s, "
              f"prefill {profile.get('prefill_secs') or 0:.3f} s, decode {profile.get('decode_secs') or 0:.3f} s): "
              + ", ".join(f"{s['stage']} {s['secs']:.3f} s/{s['calls']}" for s in stages)
              + (f" error: {profile['error']}" if profile.get("error") else ""))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    sys.exit(main())
