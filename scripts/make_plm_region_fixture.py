#!/usr/bin/env python3
"""Write the reference for PLM's region prompt path (RCap) on the tiny `cls` checkpoint of
`make_plm_fixtures.py`: the fixture video's frames 8..23 with the region drawn as vidx draws it
(a 4 px red rectangle, edges at round(coordinate × size) clamped to the last pixel), PLM's
region-caption prompt naming those frames, the processor's prompt ids, and transformers'
greedy continuation (8 steps, EOS ignored) with the logits of each step.

Output: services/model/tests/fixtures/plm/cls/region_reference.safetensors (+ a manifest entry
in region_manifest.json). CI does not run this script; its output is committed. Regenerate
(after make_plm_fixtures.py) with:

    pip install -r scripts/requirements-fixtures.txt
    HF_HUB_OFFLINE=1 python3 scripts/make_plm_region_fixture.py
"""
import json
import math
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import safetensors.torch
import torch
import transformers
from transformers import PerceptionLMForConditionalGeneration, PerceptionLMProcessor

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "services/model/tests/fixtures/plm"
CHECKPOINT = FIXTURES / "cls"
# vidx's REGION_CAPTION_PROMPT (services/model/src/captioner.rs), filled in.
PROMPT = ("Give a detailed description of the events occurring in the region marked by the red "
          "rectangle within frames [{start}, {end}] in this {frames} frame video.")
# vidx's REGION_DENSE_CAPTION_PROMPT (RDCap), filled in.
DENSE_PROMPT = ("Create a dense caption of the subject's actions within the red rectangles, including "
                "action frames ids and brief descriptions. For each item use the format [start, end]: "
                "[description] separated by a newline, where start and end are frame numbers between 0 "
                "and {last} in this {frames} frame video.")
BOX = (0.1, 0.1, 0.6, 0.7)  # x0, y0, x1, y1
MARKED = range(8, 24)
THICKNESS = 4
STEPS = 8


def to_px(value: float, size: int) -> int:
    # Rust's f32::round (half away from zero) on a non-negative value, clamped to the image.
    return min(int(math.floor(min(max(value, 0.0), 1.0) * size + 0.5)), size - 1)


def draw(frame: np.ndarray) -> np.ndarray:
    height, width, _ = frame.shape
    x1, x2 = to_px(BOX[0], width), to_px(BOX[2], width)
    y1, y2 = to_px(BOX[1], height), to_px(BOX[3], height)
    out = frame.copy()
    for y in range(y1, y2 + 1):
        for x in range(x1, x2 + 1):
            if x < x1 + THICKNESS or x + THICKNESS > x2 or y < y1 + THICKNESS or y + THICKNESS > y2:
                out[y, x] = (255, 0, 0)
    return out


@torch.no_grad()
def greedy(model, inputs, steps):
    out = model(**inputs, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    ids, logits = [], []
    step_logits = out.logits[0, -1]
    attention = inputs["attention_mask"]
    for _ in range(steps):
        token = int(step_logits.argmax())
        ids.append(token)
        logits.append(step_logits.clone())
        attention = torch.cat([attention, torch.ones(1, 1, dtype=attention.dtype)], 1)
        out = model(input_ids=torch.tensor([[token]]), attention_mask=attention, cache=cache,
                    past_key_values=cache, use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        step_logits = out.logits[0, -1]
    return torch.tensor(ids, dtype=torch.int64), torch.stack(logits).float()


def main() -> None:
    inputs = safetensors.torch.load_file(FIXTURES / "inputs.safetensors")
    frames = inputs["video.frames_u8"].numpy()
    marked = np.stack([draw(frame) if index in MARKED else frame for index, frame in enumerate(frames)])
    prompt = PROMPT.format(start=MARKED.start, end=MARKED.stop - 1, frames=len(frames))
    model = PerceptionLMForConditionalGeneration.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    processor = PerceptionLMProcessor.from_pretrained(CHECKPOINT)
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], videos=[marked], return_tensors="pt", add_special_tokens=False)
    ids, logits = greedy(model, dict(batch), STEPS)
    dense_prompt = DENSE_PROMPT.format(last=len(frames) - 1, frames=len(frames))
    dense_conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": dense_prompt}]}]
    dense_text = processor.apply_chat_template(dense_conversation, add_generation_prompt=True, tokenize=False)
    dense_batch = processor(text=[dense_text], videos=[marked], return_tensors="pt", add_special_tokens=False)
    dense_ids, dense_logits = greedy(model, dict(dense_batch), STEPS)
    tensors = {
        "rdcap.input_ids": dense_batch["input_ids"][0].to(torch.int64),
        "rdcap.greedy_ids": dense_ids,
        "rdcap.greedy_logits": dense_logits.contiguous(),
        "region.marked_u8": torch.from_numpy(marked.copy()),
        "region.input_ids": batch["input_ids"][0].to(torch.int64),
        "region.pixel_values": batch["pixel_values_videos"][0].float().contiguous(),
        "region.greedy_ids": ids,
        "region.greedy_logits": logits.contiguous(),
    }
    safetensors.torch.save_file(tensors, CHECKPOINT / "region_reference.safetensors")
    manifest = {
        "prompt": prompt,
        "rdcap_prompt": dense_prompt,
        "box": BOX,
        "marked_frames": [MARKED.start, MARKED.stop - 1],
        "thickness": THICKNESS,
        "steps": STEPS,
        "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype)} for name, t in tensors.items()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (CHECKPOINT / "region_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
