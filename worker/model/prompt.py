"""The scoring prompt: VideoScore's regression query, verbatim from the model card, and how frames join it.

This module owns the exact text the model was trained on. Any change to a character here changes scores, so
the template is kept byte for byte as published, leading and trailing newlines included.
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"

REGRESSION_QUERY_PROMPT = """
Suppose you are an expert in judging and evaluating the quality of AI-generated videos,
please watch the following frames of a given video and see the text prompt for generating the video,
then give scores from 5 different dimensions:
(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color
(2) temporal consistency, both the consistency of objects or humans and the smoothness of motion or movements
(3) dynamic degree, the degree of dynamic changes
(4) text-to-video alignment, the alignment between the text prompt and the video content
(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge

for each dimension, output a float number from 1.0 to 4.0,
the higher the number is, the better the video performs in that sub-score, 
the lowest 1.0 means Bad, the highest 4.0 means Perfect/Real (the video is like a real video)
Here is an output example:
visual quality: 3.2
temporal consistency: 2.7
dynamic degree: 4.0
text-to-video alignment: 2.3
factual consistency: 1.8

For this video, the text prompt is "{text_prompt}",
all the frames of video are as follows:
"""


def build_eval_prompt(text_prompt: str, num_frames: int) -> str:
    """Return the model card's eval prompt for a video of ``num_frames`` frames.

    Exactly the card's recipe: format the template, count the ``<image>`` tokens already present (a user
    prompt may contain some; the card counts them too), and append ``"<image> "`` for each missing frame.
    """
    eval_prompt = REGRESSION_QUERY_PROMPT.format(text_prompt=text_prompt)
    num_image_token = eval_prompt.count(IMAGE_TOKEN)
    if num_image_token < num_frames:
        eval_prompt += f"{IMAGE_TOKEN} " * (num_frames - num_image_token)
    return eval_prompt
