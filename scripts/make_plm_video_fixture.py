#!/usr/bin/env python3
"""Write the fixture of PLM's video preprocessing on frames decoded from a real encoded clip.

vidx decodes each sampled frame as shown, at the smallest size that covers the model input
(448) on both sides or at the source's own size when smaller, then applies PLM's video
preprocessing (transformers' PerceptionLMVideoProcessor: each frame resized to 448x448 with
torchvision's antialiased bicubic on uint8, then (x/255 - 0.5) / 0.5). This script makes the
reference for that path:

    clip.mp4             a 2 s, 640x360, 25 fps H.264 clip made here with the ffmpeg CLI
                         (testsrc2 with a moving box): committed, so the test decodes the very
                         bytes the reference saw
    reference.safetensors
        frames_u8        [N, 360, 640, 3] uint8: the clip's frames at the sampled times, decoded
                         by the ffmpeg CLI to rgb24 (the same libswscale conversion vidx runs)
        frame_ms         [N] int64: their presentation times
        pixels_u8        [N, 3, 448, 448] uint8: the processor's pixel_values_videos mapped back
                         to the uint8 levels it normalised ((v * 0.5 + 0.5) * 255, exact)
    manifest.json        shapes, meaning, library versions

Output: services/model/tests/fixtures/plm/clip/. CI does not run this script; its output is
committed. Regenerate with:

    pip install -r scripts/requirements-fixtures.txt
    python3 scripts/make_plm_video_fixture.py
"""
import json
import pathlib
import platform
import subprocess

import numpy as np
import safetensors.torch
import torch
import torchvision
import transformers
from transformers import PerceptionLMVideoProcessor

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "services/model/tests/fixtures/plm/clip"
WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 25, 2
SIZE = 448
# Frames sampled as vidx samples a segment [0, 2000) ms into 3: the frame on screen at the
# centre of each third (the last frame at or before it).
TARGETS_MS = [333, 1000, 1666]


def make_clip(path: pathlib.Path) -> None:
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i",
            f"testsrc2=s={WIDTH}x{HEIGHT}:r={FPS}:d={SECONDS},"
            f"drawbox=x='40+t*200':y=120:w=120:h=90:color=red@1:t=fill",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-g", str(FPS),
            "-pix_fmt", "yuv420p", str(path),
        ],
        check=True,
    )


def decode_all(path: pathlib.Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path),
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True,
    ).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, HEIGHT, WIDTH, 3)
    assert frames.shape[0] == FPS * SECONDS, frames.shape
    return frames


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    clip = OUT / "clip.mp4"
    make_clip(clip)
    frames = decode_all(clip)
    frame_ms = [1000 * (target * FPS // 1000) // FPS for target in TARGETS_MS]
    picked = np.stack([frames[ms * FPS // 1000] for ms in frame_ms])

    processor = PerceptionLMVideoProcessor(
        size={"height": SIZE, "width": SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
        do_sample_frames=False,
    )
    pixel_values = processor(videos=[picked], return_tensors="pt")["pixel_values_videos"][0].float()
    levels = (pixel_values * 0.5 + 0.5) * 255.0
    pixels_u8 = levels.round().clamp(0, 255).to(torch.uint8)
    # The normalisation is exact on uint8 levels: nothing is lost mapping back.
    assert torch.allclose(levels, pixels_u8.float(), atol=1e-3), (levels - pixels_u8.float()).abs().max()

    tensors = {
        "frames_u8": torch.from_numpy(picked.copy()),
        "frame_ms": torch.tensor(frame_ms, dtype=torch.int64),
        "pixels_u8": pixels_u8.contiguous(),
    }
    safetensors.torch.save_file(tensors, OUT / "reference.safetensors")
    manifest = {
        "clip": {"file": "clip.mp4", "width": WIDTH, "height": HEIGHT, "fps": FPS, "seconds": SECONDS},
        "targets_ms": TARGETS_MS,
        "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype)} for name, t in tensors.items()},
        "processor": "PerceptionLMVideoProcessor(size 448, mean/std 0.5, resample bicubic, do_sample_frames False)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": transformers.__version__,
            "ffmpeg": subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0],
        },
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
