"""Check our engine against the scores published on the model cards, where the real weights are reachable.

The model cards publish the outputs for the VideoScore repository's `examples/video1.mp4` and its prompt.
Weights cannot be downloaded on our CI machines, so this is run by hand on a host with hub access (or a
populated HF_HOME cache) and a copy of `video1.mp4`:

    .venv/bin/python reference/check_published.py --video path/to/video1.mp4 \
        [--model TIGER-Lab/VideoScore TIGER-Lab/VideoScore-v1.1] [--device cuda] [--dtype bfloat16]

It samples frames exactly as a worker does, scores with `videoscore.worker.model.scorer.Scorer` (the production path)
and
compares the card's 3-digit rounding. The cards ran bf16; expect agreement to about ±0.01 (a bf16 ulp near 2
to 4 is 0.0156), exact on most aspects. Exit status 1 on a larger difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoscore.core.variants import resolve_model  # noqa: E402
from videoscore.worker.model.scorer import Scorer, ScoreRequest  # noqa: E402
from videoscore.worker.video.frames import sample_video  # noqa: E402

VIDEO1_PROMPT = (
    "Near the Elephant Gate village, they approach the haunted house at night. Rajiv feels anxious, but Bhavesh "
    "encourages him. As they reach the house, a mysterious sound in the air adds to the suspense."
)
PUBLISHED = {
    "TIGER-Lab/VideoScore": [2.297, 2.469, 2.906, 2.766, 2.516],
    "TIGER-Lab/VideoScore-v1.1": [2.328, 2.484, 2.562, 1.969, 2.594],
}
TOLERANCE = 0.0157  # one bf16 ulp in [2, 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, required=True, help="the VideoScore repository's examples/video1.mp4")
    parser.add_argument("--model", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    worst = 0.0
    for model in args.model:
        spec = resolve_model(model)
        sampled = sample_video(args.video, spec.num_frames)
        with Scorer.load(spec, device=args.device, dtype=args.dtype) as scorer:
            scores = scorer.score([ScoreRequest(frames=sampled.frames, prompt=VIDEO1_PROMPT)]).scores[0].as_list()
        ours = [round(x, 3) for x in scores]
        delta = max(abs(a - b) for a, b in zip(ours, PUBLISHED[model], strict=True))
        worst = max(worst, delta)
        print(f"{model}: ours {ours} published {PUBLISHED[model]} max |Δ| {delta:.3f} (frames {sampled.indices})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
