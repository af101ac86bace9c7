#!/usr/bin/env python3
"""Write the llama3 RoPE fixture: transformers' inverse frequencies for PLM-1B's text rope
settings (head_dim 64, rope_theta 500000, llama3 scaling: factor 32, low_freq_factor 1,
high_freq_factor 4, original_max_position_embeddings 8192). With 32 frequencies they fall in
all three llama3 bands: kept (short wavelengths), divided by the factor (long ones), and the
smoothed band between. Output: services/model/tests/fixtures/plm/rope_llama3_hd64.json.
CI does not run this script; its output is committed. Regenerate with:

    pip install -r scripts/requirements-fixtures.txt
    python3 scripts/make_rope_fixture.py
"""
import json
import math
import pathlib

import transformers
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "services/model/tests/fixtures/plm/rope_llama3_hd64.json"

SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
THETA = 500000.0


def main() -> None:
    config = LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        head_dim=64,
        max_position_embeddings=131072,
        rope_parameters={"rope_theta": THETA, **SCALING},
    )
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    inv_freq = [float(value) for value in inv_freq.double()]
    # Which band each frequency is in, as llama3 decides it.
    low = SCALING["original_max_position_embeddings"] / SCALING["low_freq_factor"]
    high = SCALING["original_max_position_embeddings"] / SCALING["high_freq_factor"]
    bands = []
    for index in range(32):
        wavelength = 2 * math.pi / (THETA ** (-2 * index / 64))
        bands.append("kept" if wavelength < high else "divided" if wavelength > low else "smoothed")
    assert {"kept", "divided", "smoothed"} <= set(bands), bands
    fixture = {
        "text_config": {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rope_theta": THETA,
            "rope_scaling": SCALING,
        },
        "inv_freq": inv_freq,
        "bands": bands,
        "attention_factor": attention_factor,
        "transformers": transformers.__version__,
    }
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print({band: bands.count(band) for band in set(bands)})


if __name__ == "__main__":
    main()
