#!/usr/bin/env python3
"""Write tiny random-weight PerceptionLM (PLM) checkpoints and parity fixtures for vidx's candle port.

Reference implementation: transformers' `perception_lm` (PerceptionLMForConditionalGeneration) with
timm's Perception Encoder (`vit_pe_core_*`, an `Eva`) as vision tower through TimmWrapper, and the
PerceptionLM image / video processors. Nothing is downloaded: the weights are random, the tokenizer
is a tiny byte-level BPE trained here on a fixed corpus, the video and image are synthetic.

Two configurations (model spec: docs/models.md, "The PLM and PE spec"):

    cls    like PLM-1B/3B: `vit_pe_core_large_patch14_336`, CLS token (RoPE grid offset 1),
           llama3 rope scaling, lm_head tied. config.json uses the published-PLM layout
           (`rope_theta` + `rope_scaling` in text_config).
    nocls  like PLM-8B: `vit_pe_core_gigantic_patch14_448`, no CLS token (RoPE grid offset 0),
           no rope scaling, untied lm_head. config.json is as transformers 5.x writes it
           (`rope_parameters`).

Output (services/model/tests/fixtures/plm/):

    inputs.safetensors            shared inputs: uint8 video frames + image, the processor's
                                  pixel values (both configs share the processor settings)
    <name>/config.json, model.safetensors, generation_config.json
    <name>/tokenizer.json, tokenizer_config.json, chat_template.jinja,
    <name>/processor_config.json (+ whatever the processor's save_pretrained writes)
    <name>/reference.safetensors  reference outputs (float32 / int64)
    <name>/manifest.json          every tensor: shape, dtype, meaning; configs; library versions

CI does not run this script; its output is committed. Regenerate with:

    pip install -r scripts/requirements-fixtures.txt
    HF_HUB_OFFLINE=1 python3 scripts/make_plm_fixtures.py
"""
import json
import math
import os
import pathlib
import platform
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import safetensors
import safetensors.torch
import timm
import tokenizers
import torch
import torch.nn.functional as F
import torchvision
import transformers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    PerceptionLMConfig,
    PerceptionLMForConditionalGeneration,
    PerceptionLMImageProcessor,
    PerceptionLMProcessor,
    PerceptionLMVideoProcessor,
    PreTrainedTokenizerFast,
    TimmWrapperConfig,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "services/model/tests/fixtures/plm"
SIZE_LIMIT = 4 * 1024 * 1024

TILE = 56  # vision input size (PLM: 448); multiple of patch 14, grid 4x4 -> 2x2 tokens after pooling
PATCH = 14
MAX_NUM_TILES = 4  # PLM: 36; kept small so the tiled image stays small
NUM_FRAMES = 32
FRAME_H, FRAME_W = 48, 64  # source video size: width is downscaled (antialias), height upscaled
IMAGE_H, IMAGE_W = 60, 130  # no <=4-tile canvas covers it -> closest aspect ratio 2.0 -> 2x1 tiles
GEN_STEPS = 24

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
VIDEO_QUESTION = "What is happening in the video?"
IMAGE_QUESTION = "Describe the image in detail."

# Our own rendering of the PLM chat template (docs/models.md, PLM pre-processing): BOS, system
# turn (default system message unless the conversation starts with one), then for each message
# its header, all <|image|> placeholders, all <|video|> placeholders, its trimmed text parts and
# <|eot_id|>; finally the assistant header when a generation prompt is requested.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set sys_text = messages[0]['content'] | trim %}{% set turns = messages[1:] %}"
    "{% else %}"
    "{% set sys_text = '" + SYSTEM_PROMPT + "' %}{% set turns = messages %}"
    "{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + sys_text + '<|eot_id|>' }}"
    "{% for turn in turns %}"
    "{{ '<|start_header_id|>' + turn['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% for part in turn['content'] %}{% if part['type'] == 'image' %}{{ '<|image|>' }}{% endif %}{% endfor %}"
    "{% for part in turn['content'] %}{% if part['type'] == 'video' %}{{ '<|video|>' }}{% endif %}{% endfor %}"
    "{% for part in turn['content'] %}{% if part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}{% endfor %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Llama-3 order of the first special tokens (ids base+0 ... base+9), then a few reserved ones.
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|image|>",
    "<|video|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 11)]
BPE_VOCAB = 384  # 256 byte symbols + 128 merges; special tokens follow at 384..399
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    SYSTEM_PROMPT,
    VIDEO_QUESTION,
    IMAGE_QUESTION,
    "Create a dense caption of the subject's actions within the red rectangles, including action frames "
    "ids and brief descriptions. For each item use the format [start, end]: [description] separated by a "
    "newline, where start and end are frame numbers between 0 and 31 in this 32 frame video.",
    "Give a detailed description of the events occurring in the region marked by the red rectangle.",
    "Given the region marked by the red rectangle in the video, please provide the start and end frame.",
    "Question: what is the person doing?\nOptions:\n(A) cooking\n(B) cleaning\nOnly give the best option.",
    "The man picks up a knife and slices the tomato on the wooden board.",
    "A woman walks her dog in the park while children play soccer nearby.",
    "system user assistant video image the a of and to in is that with",
]

CONFIGS = {
    "cls": dict(
        description="like PLM-1B/3B: PE core-large arch (CLS token, RoPE grid offset 1), llama3 rope "
        "scaling, tied lm_head; config.json in the published layout (rope_theta + rope_scaling)",
        seed=1018,
        embed_std=0.5,  # tied embeddings with std 1 make greedy decoding repeat one token
        vision_arch="vit_pe_core_large_patch14_336",
        vision_use_cls_token=True,
        vision=dict(embed_dim=32, depth=2, num_heads=2),  # mlp_ratio from the arch (4.0) -> 128
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64),
        tie_word_embeddings=True,
        legacy_rope_layout=True,
    ),
    "nocls": dict(
        description="like PLM-8B: PE core-gigantic arch (no CLS token, RoPE grid offset 0, "
        "mlp_ratio 8960/1536), no rope scaling, untied lm_head; config.json as transformers 5.x "
        "writes it (rope_parameters)",
        seed=2004,  # its greedy chain emits <|eot_id|> at step 5: EOS must be ignored
        embed_std=1.0,
        vision_arch="vit_pe_core_gigantic_patch14_448",
        vision_use_cls_token=False,
        vision=dict(embed_dim=32, depth=3, num_heads=2),  # mlp_ratio from the arch -> int(32*5.833)=186
        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
        rope_scaling=None,
        tie_word_embeddings=False,
        legacy_rope_layout=False,
    ),
}

ROPE_THETA = 500000.0
MAX_POS = 1024
RMS_EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# Tokenizer and processor
# ----------------------------------------------------------------------------------------------
def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if tok.get_vocab_size() != BPE_VOCAB:
        raise SystemExit(f"BPE trainer produced {tok.get_vocab_size()} tokens, wanted {BPE_VOCAB}")
    tok.add_special_tokens([
        AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for t in SPECIAL_TOKENS
    ])
    bos = SPECIAL_TOKENS[0]
    # Like the real Llama-3 tokenizer.json: encoding with special tokens prepends BOS.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))],
        ),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        image_token="<|image|>",
        video_token="<|video|>",
        model_max_length=MAX_POS,
    )


def build_processor(tokenizer, tile=TILE, max_num_tiles=MAX_NUM_TILES) -> PerceptionLMProcessor:
    image_processor = PerceptionLMImageProcessor(
        tile_size=tile,
        max_num_tiles=max_num_tiles,
        vision_input_type="thumb+tile",
        size={"height": tile, "width": tile},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
    )
    video_processor = PerceptionLMVideoProcessor(
        size={"height": tile, "width": tile},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
        do_sample_frames=False,
    )
    return PerceptionLMProcessor(
        video_processor=video_processor,
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        pooling_ratio=2,
        chat_template=CHAT_TEMPLATE,
    )


# ----------------------------------------------------------------------------------------------
# Synthetic inputs
# ----------------------------------------------------------------------------------------------
def make_video() -> np.ndarray:
    """[T, H, W, 3] uint8: moving gradient, a sliding red box, a blue disc, a checkerboard strip."""
    t = np.arange(NUM_FRAMES, dtype=np.float64)[:, None, None]
    y = np.arange(FRAME_H, dtype=np.float64)[None, :, None]
    x = np.arange(FRAME_W, dtype=np.float64)[None, None, :]
    r = 40 + 150 * (x / (FRAME_W - 1)) + 2 * t
    g = 30 + 180 * (y / (FRAME_H - 1)) * (0.5 + 0.5 * np.cos(t / 5.0))
    b = 120 + 100 * np.sin((x + y) / 7.0 + t / 3.0)
    v = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    for i in range(NUM_FRAMES):
        x0 = (2 * i) % (FRAME_W - 14)
        v[i, 6:18, x0:x0 + 14] = (250, 20, 20)
        cy, cx = 30 + 10 * math.sin(i / 4.0), 40 - i * 0.8
        disc = (np.arange(FRAME_H)[:, None] - cy) ** 2 + (np.arange(FRAME_W)[None, :] - cx) ** 2 < 36
        v[i][disc] = (10, 30, 240)
        checker = ((np.arange(FRAME_W)[None, :] // 2 + np.arange(6)[:, None] // 2 + i) % 2) * 255
        v[i, FRAME_H - 6:, :, 1] = checker
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def make_image() -> np.ndarray:
    """[H, W, 3] uint8: diagonal bands, a yellow triangle, fine stripes."""
    y = np.arange(IMAGE_H, dtype=np.float64)[:, None]
    x = np.arange(IMAGE_W, dtype=np.float64)[None, :]
    r = 128 + 120 * np.sin((x + 2 * y) / 9.0)
    g = 255 * x / (IMAGE_W - 1)
    b = 255 * (1 - y / (IMAGE_H - 1))
    img = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    tri = (y > 10) & (y < 50) & (x > 70) & (x - 70 < (y - 10) * 1.2)
    img[tri] = (250, 230, 20)
    img[:, :20, :] = ((np.arange(IMAGE_H)[:, None, None] % 3 == 0) * 255).astype(np.float64)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def build_config(spec, tokenizer, tile=TILE, max_pos=MAX_POS) -> PerceptionLMConfig:
    """`tile` and `max_pos` are parameters for scripts/bench_plm.py; the fixtures use the defaults."""
    grid = tile // PATCH
    vision_config = TimmWrapperConfig(
        architecture=spec["vision_arch"],
        do_pooling=False,
        model_args=dict(
            embed_dim=spec["vision"]["embed_dim"],
            depth=spec["vision"]["depth"],
            num_heads=spec["vision"]["num_heads"],  # real PLM configs omit it (arch default 16)
            img_size=[tile, tile],
            global_pool="",
            use_post_transformer_norm=False,
            init_values=0.1,
            ref_feat_shape=[grid, grid],
        ),
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    if spec["rope_scaling"] is not None:
        rope_parameters = dict(spec["rope_scaling"], rope_theta=ROPE_THETA)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_pos,
        rms_norm_eps=RMS_EPS,
        rope_parameters=rope_parameters,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]],
        pad_token_id=None,
        tie_word_embeddings=spec["tie_word_embeddings"],
        **spec["text"],
    )
    return PerceptionLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        vision_use_cls_token=spec["vision_use_cls_token"],
        projector_pooling_ratio=2,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        tie_word_embeddings=spec["tie_word_embeddings"],
    )


@torch.no_grad()
def init_weights(model, seed: int, embed_std: float) -> None:
    """O(1) activations: std-0.02 init would hide bugs (docs/models.md, Making parity fixtures)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        shape = tuple(p.shape)
        rnd = torch.randn(shape, generator=gen, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if "gamma_" in leaf:
            val = 0.5 + 0.25 * rnd
        elif leaf == "bias":
            val = 0.2 * rnd
        elif p.dim() == 1:  # LayerNorm / RMSNorm weights
            val = 1.0 + 0.2 * rnd
        elif "embed_tokens" in name:
            val = embed_std * rnd
        elif leaf in ("cls_token", "pos_embed"):
            val = 0.7 * rnd
        else:  # Linear / conv weights: unit-variance outputs, a bit hotter for sharper attention
            fan_in = int(np.prod(shape[1:]))
            val = 1.3 * rnd / math.sqrt(fan_in)
        p.copy_(val.to(p.dtype))


def legacy_rope_layout(config_path: pathlib.Path, spec) -> None:
    """Rewrite text_config the way published PLM config.json files express RoPE."""
    cfg = json.loads(config_path.read_text())
    tc = cfg["text_config"]
    rp = tc.pop("rope_parameters")
    tc["rope_theta"] = rp["rope_theta"]
    scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    tc["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Independent re-implementation of the vision tower + projector from docs/models.md (PLM architecture)
# (checks the spec, not transformers; the Rust port follows the spec).
# ----------------------------------------------------------------------------------------------
def spec_vision(sd, pixel_values, *, cls, heads, eps=1e-5):
    pre = "model.vision_tower.timm_model."
    w = lambda k: sd[pre + k]
    x = F.conv2d(pixel_values, w("patch_embed.proj.weight"), stride=PATCH)  # no bias
    n, c, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    if cls:
        x = torch.cat([w("cls_token").expand(n, -1, -1), x], 1)
    x = x + w("pos_embed")
    x = F.layer_norm(x, (c,), w("norm_pre.weight"), w("norm_pre.bias"), eps)
    hd = c // heads
    q4 = hd // 4
    bands = 10000.0 ** (-torch.arange(q4, dtype=torch.float64) / q4)
    off = 1.0 if cls else 0.0
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")
    ang = torch.cat([(cols.reshape(-1, 1) + off) * bands, (rows.reshape(-1, 1) + off) * bands], 1)  # [N, hd/2]
    cos, sin = ang.cos().float(), ang.sin().float()
    if cls:
        cos = torch.cat([torch.ones(1, hd // 2), cos])
        sin = torch.cat([torch.zeros(1, hd // 2), sin])

    def rope_i(t):  # interleaved pairs (2i, 2i+1)
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    i = 0
    while pre + f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        h = F.layer_norm(x, (c,), w(b + "norm1.weight"), w(b + "norm1.bias"), eps)
        qkv = F.linear(h, w(b + "attn.qkv.weight"), w(b + "attn.qkv.bias"))
        q, k, v = qkv.reshape(n, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k = rope_i(q), rope_i(k)
        att = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, -1)
        o = (att @ v).transpose(1, 2).reshape(n, -1, c)
        x = x + w(b + "gamma_1") * F.linear(o, w(b + "attn.proj.weight"), w(b + "attn.proj.bias"))
        h = F.layer_norm(x, (c,), w(b + "norm2.weight"), w(b + "norm2.bias"), eps)
        h = F.linear(F.gelu(F.linear(h, w(b + "mlp.fc1.weight"), w(b + "mlp.fc1.bias"))),
                     w(b + "mlp.fc2.weight"), w(b + "mlp.fc2.bias"))
        x = x + w(b + "gamma_2") * h
        i += 1
    return x[:, 1:] if cls else x


def spec_projector(sd, feats):
    p = "model.multi_modal_projector."
    h = F.linear(feats, sd[p + "linear_1.weight"], sd[p + "linear_1.bias"])
    h = F.linear(F.gelu(h), sd[p + "linear_2.weight"], sd[p + "linear_2.bias"])
    n, L, d = h.shape
    g = int(math.isqrt(L))
    h = F.avg_pool2d(h.transpose(1, 2).reshape(n, d, g, g), 2)
    return h.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Reference runs
# ----------------------------------------------------------------------------------------------
def max_abs(a, b):
    return float((a.float() - b.float()).abs().max())


@torch.no_grad()
def greedy(model, inputs, steps):
    """Greedy decoding with the KV cache, EOS ignored. Returns ids [steps] and step logits [steps, V]."""
    out = model(**inputs, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    ids, logits = [], []
    step_logits = out.logits[0, -1]
    attn = inputs["attention_mask"]
    for _ in range(steps):
        nxt = int(step_logits.argmax())
        ids.append(nxt)
        logits.append(step_logits.clone())
        attn = torch.cat([attn, torch.ones(1, 1, dtype=attn.dtype)], 1)
        out = model(input_ids=torch.tensor([[nxt]]), attention_mask=attn, cache=cache, use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        step_logits = out.logits[0, -1]
    return torch.tensor(ids, dtype=torch.int64), torch.stack(logits)


def logit_positions(input_ids, video_id):
    ids = input_ids[0].tolist()
    L = len(ids)
    vid = [i for i, t in enumerate(ids) if t == video_id]
    picks = {0, 1, 5, L // 4, vid[0] - 1, vid[0], vid[0] + 1, (vid[0] + vid[-1]) // 2, vid[-1], vid[-1] + 1,
             vid[-1] + 3, L - 3, L - 2, L - 1}
    return torch.tensor(sorted(p for p in picks if 0 <= p < L), dtype=torch.int64)


def run_config(name, spec, tokenizer, shared, entries_shared):
    out_dir = OUT / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    torch.manual_seed(spec["seed"])

    config = build_config(spec, tokenizer)
    model = PerceptionLMForConditionalGeneration(config).eval()
    init_weights(model, spec["seed"], spec["embed_std"])
    model.save_pretrained(out_dir)
    processor = build_processor(tokenizer)
    processor.save_pretrained(out_dir)
    if spec["legacy_rope_layout"]:
        legacy_rope_layout(out_dir / "config.json", spec)

    # Reload through the official loading path; everything below uses the files on disk.
    ref = PerceptionLMForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32).eval()
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), f"reload changed {k1}"
    rc = ref.config.text_config
    assert (rc.rope_parameters.get("rope_type", "default") == "llama3") == (spec["rope_scaling"] is not None), rc
    proc = PerceptionLMProcessor.from_pretrained(out_dir)
    file_sd = safetensors.torch.load_file(out_dir / "model.safetensors")
    assert ("lm_head.weight" in file_sd) == (not spec["tie_word_embeddings"])
    sd = {k: v.float() for k, v in ref.state_dict().items()}
    tm = ref.model.vision_tower.timm_model
    assert (tm.cls_token is not None) == spec["vision_use_cls_token"], "class_token / vision_use_cls_token mismatch"

    # ---------------- prompts -----------------
    video_conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": VIDEO_QUESTION}]}]
    image_conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_QUESTION}]}]
    video_prompt = proc.apply_chat_template(video_conv, add_generation_prompt=True, tokenize=False)
    image_prompt = proc.apply_chat_template(image_conv, add_generation_prompt=True, tokenize=False)
    vin = proc(text=[video_prompt], videos=[shared["video.frames_u8"].numpy()], return_tensors="pt",
               add_special_tokens=False)
    iin = proc(text=[image_prompt], images=[shared["image.u8"].numpy()], return_tensors="pt",
               add_special_tokens=False)
    pv_video = vin["pixel_values_videos"].float()
    pv_image = iin["pixel_values"].float()
    if "video.pixel_values" in shared:
        assert torch.equal(shared["video.pixel_values"], pv_video[0]), "processor output differs between configs"
        assert torch.equal(shared["image.pixel_values"], pv_image[0])
    else:
        shared["video.pixel_values"] = pv_video[0].contiguous()
        shared["image.pixel_values"] = pv_image[0].contiguous()
        entries_shared["video.pixel_values"] = (
            "processor(videos=[video.frames_u8]).pixel_values_videos[0]: each frame resized (torchvision "
            f"bicubic, antialias, on uint8, rounded) to {TILE}x{TILE}, then (x - 127.5) / 127.5; [frames, 3, H, W]")
        entries_shared["image.pixel_values"] = (
            "processor(images=[image.u8]).pixel_values[0], thumb+tile mode, tile_size "
            f"{TILE}, max_num_tiles {MAX_NUM_TILES}: [thumbnail (whole image squashed to tile), tiles "
            "row-major of the image squashed to (nw*tile, nh*tile)], same normalisation; [tiles, 3, H, W]")

    # Template sanity: the rendered text is the spec's string.
    expected = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT +
                "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<|video|>" + VIDEO_QUESTION +
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert video_prompt == expected, repr(video_prompt)
    input_ids = vin["input_ids"]
    plain_ids = tokenizer(video_prompt, add_special_tokens=False)["input_ids"]
    vid_id, img_id = config.video_token_id, config.image_token_id
    per_tile = (TILE // PATCH // 2) ** 2
    assert int((input_ids == vid_id).sum()) == NUM_FRAMES * per_tile
    assert plain_ids.count(vid_id) == 1
    assert input_ids[0, 0] == config.text_config.bos_token_id and input_ids[0, 1] != input_ids[0, 0]

    res, meaning = {}, {}

    def put(key, tensor, text):
        res[key] = tensor.detach().contiguous()
        meaning[key] = text

    with torch.no_grad():
        put("video.prompt_ids", torch.tensor(plain_ids, dtype=torch.int64),
            "tokenizer(video prompt text, add_special_tokens=False): one <|video|> placeholder")
        put("video.input_ids", input_ids[0],
            f"processor output: the <|video|> placeholder expanded to frames*{per_tile} copies, BOS not duplicated")

        # -------- vision tower and projector (video) --------
        flat = pv_video.flatten(0, 1)
        vt_out = ref.model.vision_tower(flat, return_dict=True).last_hidden_state
        cls = spec["vision_use_cls_token"]
        patches = vt_out[:, 1:] if cls else vt_out
        put("video.vision_out", patches,
            "model.model.vision_tower(pixel_values.flatten(0,1)).last_hidden_state (timm Eva.forward_features: "
            "no final norm)" + (", CLS row removed ([:, 1:])" if cls else "") + "; [frames, grid*grid, W]")
        if cls:
            put("video.vision_cls", vt_out[:, 0], "the CLS row (token 0) of the same vision output, dropped by PLM")
        proj = ref.model.get_image_features(pixel_values=pv_video).pooler_output
        assert max_abs(proj, ref.model.multi_modal_projector(patches)) == 0
        put("video.projector_out", proj,
            "model.model.get_image_features(pixel_values=pv).pooler_output = multi_modal_projector(vision_out): "
            "linear_1 -> GELU(erf) -> linear_2, then 2x2 adaptive avg pool; [frames, (grid/2)^2, D]")

        # intermediates for frame 0 (hooks on the timm model)
        acts = {}
        hooks = [
            tm.patch_embed.register_forward_hook(lambda m, i, o: acts.__setitem__("patch_embed", o)),
            tm.norm_pre.register_forward_hook(lambda m, i, o: acts.update(pos_embed=i[0], norm_pre=o)),
        ]
        for bi, blk in enumerate(tm.blocks):
            hooks.append(blk.register_forward_hook(lambda m, i, o, bi=bi: acts.__setitem__(f"block{bi}", o)))
        tm.forward_features(pv_video[0, :1])
        for h in hooks:
            h.remove()
        put("video.frame0.patch_embed", acts["patch_embed"][0],
            "timm_model.patch_embed output for frame 0 (conv 14/14 no bias, flattened row-major); [grid*grid, W]")
        put("video.frame0.pos_embed", acts["pos_embed"][0],
            "frame 0 after CLS prepend (if any) + pos_embed = input of norm_pre; [tokens, W]")
        put("video.frame0.norm_pre", acts["norm_pre"][0], "frame 0 after norm_pre; [tokens, W]")
        for bi in range(len(tm.blocks)):
            put(f"video.frame0.block{bi}", acts[f"block{bi}"][0],
                f"frame 0 after blocks.{bi} (incl. CLS row if any); [tokens, W]")

        # independent spec re-implementation must agree
        spec_patches = spec_vision(sd, flat, cls=cls, heads=spec["vision"]["num_heads"])
        spec_proj = spec_projector(sd, spec_patches)
        err_vis, err_proj = max_abs(spec_patches, patches), max_abs(spec_proj, proj)
        assert err_vis < 1e-4 and err_proj < 1e-4, (err_vis, err_proj)

        # -------- vision tower and projector (image, tiled) --------
        ivt = ref.model.vision_tower(pv_image.flatten(0, 1), return_dict=True).last_hidden_state
        ipatches = ivt[:, 1:] if cls else ivt
        put("image.vision_out", ipatches, "as video.vision_out, for image.pixel_values (thumbnail then tiles)")
        iproj = ref.model.get_image_features(pixel_values=pv_image).pooler_output
        put("image.projector_out", iproj, "as video.projector_out, for the image tiles")
        err_img = max_abs(spec_projector(sd, spec_vision(sd, pv_image.flatten(0, 1), cls=cls,
                                                           heads=spec["vision"]["num_heads"])), iproj)
        assert err_img < 1e-4, err_img

        # -------- LLM with the video spliced in --------
        out = ref(**vin)
        logits = out.logits[0]
        put("video.logits_last", logits[-1], "model(input_ids, pixel_values_videos).logits[0, -1]; [V]")
        pos = logit_positions(input_ids, vid_id)
        put("video.logit_positions", pos, "positions (0-based into video.input_ids) of video.logits_at")
        put("video.logits_at", logits[pos], "full-forward logits at video.logit_positions; [K, V]")
        # splice check: inputs_embeds with projector rows at placeholder positions, in order
        emb = ref.model.get_input_embeddings()(input_ids)
        emb[input_ids == vid_id] = proj.reshape(-1, proj.shape[-1])
        lg2 = ref(inputs_embeds=emb, attention_mask=vin["attention_mask"]).logits[0]
        assert max_abs(lg2, logits) < 1e-4

        gen_ids, gen_logits = greedy(ref, dict(vin), GEN_STEPS)
        put("video.generated_ids", gen_ids,
            f"greedy continuation, {GEN_STEPS} steps, EOS NOT treated as a stop (argmax each step, KV cache)")
        put("video.generated_step_logits", gen_logits,
            "logits from which generated_ids[i] was taken (row 0 = video.logits_last); [steps, V]")
        # cross-check: no-cache recompute gives the same argmax chain
        seq = torch.cat([input_ids, gen_ids[None, :-1]], 1)
        full = ref(input_ids=seq, attention_mask=torch.ones_like(seq), pixel_values_videos=pv_video).logits[0]
        recomputed = full[input_ids.shape[1] - 1:]
        assert torch.equal(recomputed.argmax(-1), gen_ids) and max_abs(recomputed, gen_logits) < 1e-3
        # cross-check: model.generate (stops at EOS) is a prefix of our chain
        g = ref.generate(**vin, max_new_tokens=GEN_STEPS, do_sample=False)[0, input_ids.shape[1]:]
        assert torch.equal(g, gen_ids[: len(g)]), (g, gen_ids)
        top2 = gen_logits.topk(2, -1).values
        min_margin = float((top2[:, 0] - top2[:, 1]).min())
        assert min_margin > 0.02 and len(set(gen_ids.tolist())) >= 8, (min_margin, gen_ids)
        stops = set(config.text_config.eos_token_id)
        first_stop = next((i for i, t in enumerate(gen_ids.tolist()) if t in stops), None)

        # -------- LLM with the image spliced in --------
        put("image.input_ids", iin["input_ids"][0],
            f"processor output for the image prompt: <|image|> expanded to tiles*{per_tile}")
        put("image.logits_last", ref(**iin).logits[0, -1], "model(input_ids, pixel_values).logits[0, -1]; [V]")

        # how much llama3 rope scaling matters here (it must, or the fixture would not test it)
        scaling_effect = None
        if spec["rope_scaling"] is not None:
            plain_cfg = PerceptionLMConfig.from_pretrained(out_dir)
            plain_cfg.text_config.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
            plain = PerceptionLMForConditionalGeneration(plain_cfg).eval()
            plain.load_state_dict(ref.state_dict())
            scaling_effect = max_abs(plain(**vin).logits[0, -1], logits[-1])
            assert scaling_effect > 0.1, scaling_effect

    safetensors.torch.save_file(res, out_dir / "reference.safetensors")

    vc = ref.config.vision_config
    tc_json = json.loads((out_dir / "config.json").read_text())["text_config"]
    manifest = {
        "name": name,
        "description": spec["description"],
        "seed": spec["seed"],
        "files": sorted(p.name for p in out_dir.iterdir()) + ["manifest.json"],
        "shared_inputs": "../inputs.safetensors",
        "model": {
            "vision_architecture": vc.architecture,
            "vision_model_args": vc.model_args,
            "vision_use_cls_token": ref.config.vision_use_cls_token,
            "vision_rope_grid_offset": float(tm.rope.grid_offset) if hasattr(tm.rope, "grid_offset") else None,
            "vision_mlp_hidden": int(tm.blocks[0].mlp.fc1.out_features),
            "vision_grid": [TILE // PATCH, TILE // PATCH],
            "projector_pooling_ratio": ref.config.projector_pooling_ratio,
            "tokens_per_tile": per_tile,
            "text_config_rope_fields": {k: tc_json.get(k) for k in ("rope_theta", "rope_scaling", "rope_parameters")
                                        if k in tc_json},
            "tie_word_embeddings": ref.config.tie_word_embeddings,
            "image_token_id": config.image_token_id,
            "video_token_id": config.video_token_id,
            "bos_token_id": config.text_config.bos_token_id,
            "eos_token_id": config.text_config.eos_token_id,
            "vocab_size": config.text_config.vocab_size,
        },
        "checkpoint_tensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")]
                               for k, v in sorted(file_sd.items())},
        "prompts": {"video": video_prompt, "image": image_prompt},
        "generation": {
            "steps": GEN_STEPS,
            "eos_ignored": True,
            "first_stop_token_index": first_stop,
            "min_top1_top2_margin": min_margin,
            "hf_generate_ids_until_stop": g.tolist(),
        },
        "checks": {
            "llama3_scaling_vs_none_last_logits_max_abs_diff": scaling_effect,
            "spec_reimplementation_max_abs_err": {"video_vision": err_vis, "video_projector": err_proj,
                                                  "image_projector": err_img},
        },
        "tensors": {
            "reference.safetensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                                          "meaning": meaning[k]} for k, v in res.items()},
            "../inputs.safetensors": None,  # filled in main()
        },
        "versions": versions(),
        "regenerate": "HF_HUB_OFFLINE=1 python3 scripts/make_plm_fixtures.py",
    }
    return manifest


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def dir_size(p: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    # Set here, not at import: scripts/bench_plm.py imports this module and picks its own threads.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    shared = {
        "video.frames_u8": torch.from_numpy(make_video()),
        "image.u8": torch.from_numpy(make_image()),
    }
    entries_shared = {
        "video.frames_u8": f"synthetic source video, {NUM_FRAMES} frames (already sampled; HF uses "
                           "floor(arange(0, N, N/32)) when sampling), RGB uint8; [frames, H, W, 3]",
        "image.u8": "synthetic source image, RGB uint8; [H, W, 3]",
    }
    manifests = {name: run_config(name, spec, tokenizer, shared, entries_shared) for name, spec in CONFIGS.items()}
    safetensors.torch.save_file({k: v.contiguous() for k, v in shared.items()}, OUT / "inputs.safetensors")
    inputs_desc = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                       "meaning": entries_shared[k]} for k, v in shared.items()}
    for name, man in manifests.items():
        man["tensors"]["../inputs.safetensors"] = inputs_desc
        (OUT / name / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
    total = dir_size(OUT)
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>9}  {p.relative_to(OUT)}")
    print(f"{total:>9}  total")
    if total > SIZE_LIMIT:
        raise SystemExit(f"fixtures are {total} bytes, over the {SIZE_LIMIT} limit")


if __name__ == "__main__":
    sys.exit(main())
