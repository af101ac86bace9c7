#!/usr/bin/env python3
"""PerceptionLM (PLM) CPU speed benchmark (not a test): vidx's candle port against the reference
transformers implementation, on the same random-weight checkpoint, the same input shapes and the
same number of threads, one after the other in this one process tree on this one machine.

The checkpoint is a mid-size random PLM built with scripts/make_plm_fixtures.py's helpers (tiny
byte-level BPE tokenizer with Llama-3 special tokens, `build_config`, `init_weights`,
`build_processor`) and saved in the HF layout that vidx loads (config.json in the published PLM
layout, model.safetensors in float32, tokenizer.json, processor_config.json). Defaults:

    vision  vit_pe_core_large_patch14_336 arch (CLS token), 12 layers x 384 wide, 6 heads,
            448 px frames, patch 14 -> 32x32 grid, 2x2 pooling -> 256 tokens per frame
    LLM     Llama, 4 layers x 1024 hidden, 16 heads (8 KV heads, head_dim 64), MLP 4096,
            llama3 rope scaling as in PLM-1B (factor 32, low 1, high 4, original 8192),
            rope_theta 5e5, lm_head tied to the embeddings
    heads   width / 64 in both towers, KV heads = heads / 2, MLP = 4 x hidden

Three timings per side, best of --repeats:

    vision   get_image_features on [frames, 3, S, S] random normalised pixels -> frames/s
    prefill  the LLM over the whole video prompt ("What is happening in the video?" with the
             <|video|> placeholder expanded to frames x 256 tokens), visual tokens spliced in,
             plus lm_head on the last position; vision NOT included -> prompt tokens/s
    decode   greedy steps with the KV cache, one token in per step; the first new token comes
             from the prefill logits, so new_tokens - 1 steps -> tokens/s

The candle side is `services/model/examples/plm_bench.rs`, run with RAYON_NUM_THREADS=threads;
it writes its own JSON. Normally run through scripts/bench-plm.sh, which builds it first:

    bash scripts/bench-plm.sh [--frames 8] [--new-tokens 32] [--threads 2] [--repeats 2] ...
    python3 scripts/bench_plm.py --skip-candle --vision-layers 2 --vision-width 128 ...
"""
import argparse
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from transformers import PerceptionLMForConditionalGeneration

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_plm_fixtures as fixtures  # noqa: E402  (helpers; importing it writes nothing)

ROOT = fixtures.ROOT
HEAD_DIM = 64
POOLING = 2
MAX_POS = 131072  # PLM-1B's text_config.max_position_embeddings
SEED = 4242
METRICS = ("vision_frames_per_s", "prefill_tokens_per_s", "decode_tokens_per_s")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32, help="generated tokens (first from the prefill)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads = RAYON_NUM_THREADS")
    p.add_argument("--repeats", type=int, default=2, help="runs per side; the best time of each metric counts")
    p.add_argument("--vision-layers", type=int, default=12)
    p.add_argument("--vision-width", type=int, default=384, help="multiple of 64 (heads = width / 64)")
    p.add_argument("--llm-layers", type=int, default=4)
    p.add_argument("--llm-hidden", type=int, default=1024, help="multiple of 128 (heads = hidden / 64)")
    p.add_argument("--image-size", type=int, default=448, help="frame size in pixels, multiple of 28")
    p.add_argument("--out", type=pathlib.Path, help="write the checkpoint here and keep it (default: a temp dir)")
    p.add_argument("--json", type=pathlib.Path, default=ROOT / "target/bench-plm.json")
    p.add_argument("--candle-bin", type=pathlib.Path, default=ROOT / "target/release/examples/plm_bench")
    p.add_argument("--skip-candle", action="store_true", help="time the reference only")
    a = p.parse_args()
    if a.vision_width % HEAD_DIM or a.llm_hidden % (2 * HEAD_DIM):
        p.error(f"--vision-width must be a multiple of {HEAD_DIM}, --llm-hidden of {2 * HEAD_DIM}")
    if a.image_size % (fixtures.PATCH * POOLING):
        p.error(f"--image-size must be a multiple of {fixtures.PATCH * POOLING}")
    if min(a.frames, a.new_tokens, a.threads, a.repeats, a.vision_layers, a.llm_layers) < 1:
        p.error("counts must be positive")
    return a


# ----------------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------------
def bench_spec(a):
    """A make_plm_fixtures.CONFIGS-style spec, PLM-1B-like ("cls" fixture layout) at bench size."""
    heads = a.llm_hidden // HEAD_DIM
    return dict(
        seed=SEED,
        embed_std=0.5,
        vision_arch="vit_pe_core_large_patch14_336",
        vision_use_cls_token=True,
        vision=dict(embed_dim=a.vision_width, depth=a.vision_layers, num_heads=a.vision_width // HEAD_DIM),
        text=dict(hidden_size=a.llm_hidden, intermediate_size=4 * a.llm_hidden, num_hidden_layers=a.llm_layers,
                  num_attention_heads=heads, num_key_value_heads=heads // 2, head_dim=HEAD_DIM),
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        tie_word_embeddings=True,
        legacy_rope_layout=True,
    )


def write_checkpoint(a, spec, tokenizer, out_dir: pathlib.Path):
    """Random float32 checkpoint in the HF layout; returns (config, parameter count)."""
    torch.manual_seed(spec["seed"])
    config = fixtures.build_config(spec, tokenizer, tile=a.image_size, max_pos=MAX_POS)
    model = PerceptionLMForConditionalGeneration(config).eval()
    # The fixtures' init (unit-scale activations): no vanishing activations, so no denormal floats
    # that would slow either side down.
    fixtures.init_weights(model, spec["seed"], spec["embed_std"])
    model.save_pretrained(out_dir)
    fixtures.build_processor(tokenizer, tile=a.image_size).save_pretrained(out_dir)
    fixtures.legacy_rope_layout(out_dir / "config.json", spec)
    return config, sum(p.numel() for p in model.parameters())


def prompt_ids(tokenizer, config, frames, per_frame):
    """The video prompt as the PLM processor builds it: chat text tokenized without added special
    tokens (BOS is in the text), the one <|video|> placeholder expanded to frames * per_frame."""
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": fixtures.VIDEO_QUESTION}]}]
    text = tokenizer.apply_chat_template(conv, chat_template=fixtures.CHAT_TEMPLATE, add_generation_prompt=True,
                                         tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    vid = config.video_token_id
    assert ids.count(vid) == 1, "the tokenizer split the <|video|> placeholder"
    at = ids.index(vid)
    return torch.tensor([ids[:at] + [vid] * (frames * per_frame) + ids[at + 1:]], dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# Reference (transformers) timing
# ----------------------------------------------------------------------------------------------
def kv_cache(out):
    """The KV cache of a forward (transformers 5 names it `cache`, older versions `past_key_values`)."""
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def load_reference(a, model_dir):
    torch.set_num_threads(a.threads)
    return PerceptionLMForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.inference_mode()
def time_reference(a, model, tokenizer, per_frame):
    core, lm = model.model, model.model.language_model
    gen = torch.Generator().manual_seed(SEED)
    pixels = torch.rand((1, a.frames, 3, a.image_size, a.image_size), generator=gen) * 2 - 1  # [-1, 1)
    ids = prompt_ids(tokenizer, model.config, a.frames, per_frame)
    video_mask = ids == model.config.video_token_id

    best = {"vision_secs": float("inf"), "prefill_secs": float("inf"), "decode_secs": float("inf")}
    for run in range(a.repeats):
        t0 = time.perf_counter()
        visual = core.get_image_features(pixel_values=pixels).pooler_output  # [frames, per_frame, D]
        t1 = time.perf_counter()

        # Prefill without the tower: embed, splice the visual rows, LLM forward, logits of the last row.
        embeds = core.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(video_mask[..., None], visual.reshape(-1, visual.shape[-1]))
        out = lm(inputs_embeds=embeds, use_cache=True)
        logits = model.lm_head(out.last_hidden_state[:, -1])
        token = logits.argmax(-1, keepdim=True)
        t2 = time.perf_counter()

        cache = kv_cache(out)
        for _ in range(a.new_tokens - 1):
            out = lm(input_ids=token, cache=cache, use_cache=True)
            cache = kv_cache(out)
            token = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
        t3 = time.perf_counter()

        assert cache.get_seq_length() == ids.shape[1] + a.new_tokens - 1, cache.get_seq_length()
        for key, secs in (("vision_secs", t1 - t0), ("prefill_secs", t2 - t1), ("decode_secs", t3 - t2)):
            best[key] = min(best[key], secs)
        print(f"reference run {run + 1}: vision {t1 - t0:.3f}s, prefill {t2 - t1:.3f}s, "
              f"decode {t3 - t2:.3f}s", file=sys.stderr)

    prompt = ids.shape[1]
    steps = a.new_tokens - 1
    return dict(
        best,
        frames=a.frames,
        prompt_tokens=prompt,
        new_tokens=a.new_tokens,
        threads=torch.get_num_threads(),
        vision_frames_per_s=a.frames / best["vision_secs"],
        prefill_tokens_per_s=prompt / best["prefill_secs"],
        decode_tokens_per_s=steps / best["decode_secs"] if steps else None,
    )


# ----------------------------------------------------------------------------------------------
# Candle timing
# ----------------------------------------------------------------------------------------------
def bench_candle(a, model_dir, work, repeats):
    if not a.candle_bin.is_file():
        raise SystemExit(f"{a.candle_bin} not found: build it with scripts/bench-plm.sh, or pass --candle-bin "
                         "or --skip-candle")
    out = work / "candle.json"
    cmd = [str(a.candle_bin), "--model-dir", str(model_dir), "--frames", str(a.frames),
           "--new-tokens", str(a.new_tokens), "--repeats", str(repeats), "--warmup", "1",
           "--json", str(out)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    print(f"RAYON_NUM_THREADS={a.threads} {' '.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def best_of(best, run):
    """Merge one run into the best so far: the shortest time and highest rate per metric."""
    if best is None:
        return run
    merged = dict(run)
    for key, value in run.items():
        if not isinstance(value, (int, float)) or key not in best or best[key] is None:
            continue
        if key.endswith("_secs"):
            merged[key] = min(best[key], value)
        elif key.endswith("_per_s"):
            merged[key] = max(best[key], value)
    return merged


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def versions():
    v = {k: val for k, val in fixtures.versions().items() if k != "torchvision"}
    lock = ROOT / "Cargo.lock"
    if lock.is_file():  # the candle crates the example was built against
        found = re.search(r'name = "candle-core"\nversion = "([^"]+)"', lock.read_text())
        v["candle-core"] = found.group(1) if found else None
    return v


def cpu_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(candle, reference):
    rows = [("metric", "candle", "reference", "candle/ref")]
    ratios = {}
    for key in METRICS:
        c = candle.get(key) if candle else None
        r = reference.get(key)
        ratios[key] = round(c / r, 3) if c and r else None
        rows.append((key, f"{c:.2f}" if c else "-", f"{r:.2f}" if r else "-",
                     f"{ratios[key]:.2f}" if ratios[key] else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(lines), ratios


def main() -> None:
    a = parse_args()
    transformers.utils.logging.disable_progress_bar()
    spec = bench_spec(a)
    per_frame = (a.image_size // fixtures.PATCH // POOLING) ** 2
    tokenizer = fixtures.build_tokenizer()
    with tempfile.TemporaryDirectory(prefix="bench-plm-") as tmp:
        work = pathlib.Path(tmp)
        model_dir = a.out or work / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        _, params = write_checkpoint(a, spec, tokenizer, model_dir)
        print(f"wrote a {params / 1e6:.1f}M-parameter random PLM to {model_dir} in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)

        # Rounds alternate reference and candle, so drift in this machine's load hits both;
        # each metric keeps its best round. Both sides are timed warm: the reference after one
        # untimed run in this process, candle after one untimed run in each of its processes.
        model = load_reference(a, model_dir)
        one = argparse.Namespace(**{**vars(a), "repeats": 1})
        print("reference warm-up run (not timed):", file=sys.stderr)
        time_reference(one, model, tokenizer, per_frame)
        reference = candle = None
        for _ in range(a.repeats):
            reference = best_of(reference, time_reference(one, model, tokenizer, per_frame))
            if not a.skip_candle:
                candle = best_of(candle, bench_candle(a, model_dir, work, 1))

    if candle is not None and candle.get("prompt_tokens") != reference["prompt_tokens"]:
        print(f"warning: candle prompt has {candle.get('prompt_tokens')} tokens, reference "
              f"{reference['prompt_tokens']}", file=sys.stderr)
    text, ratios = table(candle, reference)
    report = {
        "config": {
            "frames": a.frames,
            "new_tokens": a.new_tokens,
            "repeats": a.repeats,
            "image_size": a.image_size,
            "tokens_per_frame": per_frame,
            "prompt_tokens": reference["prompt_tokens"],
            "parameters": params,
            "dtype": "float32",
            "vision_architecture": spec["vision_arch"],
            "vision": spec["vision"],
            "text": spec["text"],
            "rope_scaling": spec["rope_scaling"],
            "rope_theta": fixtures.ROPE_THETA,
            "tie_word_embeddings": spec["tie_word_embeddings"],
            "vocab_size": len(tokenizer),
            "checkpoint": str(a.out) if a.out else None,
        },
        "threads": a.threads,
        "cpu": cpu_name(),
        "versions": versions(),
        "candle": candle,
        "reference": reference,
        "candle_over_reference": ratios,
        "notes": "best of repeats, each side timed after one untimed warm-up run; prefill excludes the vision tower; decode rate over new_tokens - 1 "
                 "KV-cache steps (the first token comes from the prefill logits)",
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"PLM on CPU, {a.threads} threads, {a.frames} frames x {per_frame} tokens, prompt "
          f"{reference['prompt_tokens']} tokens, {a.new_tokens} new tokens, best of {a.repeats} "
          f"({params / 1e6:.1f}M params, float32)")
    print(text)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    sys.exit(main())
