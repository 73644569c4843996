"""The scoring prompt is the model card's, character for character, and gets one <image> per frame."""

from __future__ import annotations

from videoscore.worker.model.prompt import REGRESSION_QUERY_PROMPT, build_eval_prompt

CARD_VIDEO_PROMPT = (
    "Near the Elephant Gate village, they approach the haunted house at night. Rajiv feels anxious, but "
    "Bhavesh encourages him. As they reach the house, a mysterious sound in the air adds to the suspense."
)

# The card's template as published (VideoScore repository, examples/run_videoscore.py, and the model card's
# source), written out line by line so that a stray edit to worker/prompt.py cannot go unnoticed. Note the
# blank lines and the trailing space after "sub-score,": the HTML copy in shared/reference lost both.
CARD_LINES = [
    "",
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos,",
    "please watch the following frames of a given video and see the text prompt for generating the video,",
    "then give scores from 5 different dimensions:",
    "(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color",
    "(2) temporal consistency, both the consistency of objects or humans and the smoothness of motion or movements",
    "(3) dynamic degree, the degree of dynamic changes",
    "(4) text-to-video alignment, the alignment between the text prompt and the video content",
    "(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge",
    "",
    "for each dimension, output a float number from 1.0 to 4.0,",
    "the higher the number is, the better the video performs in that sub-score, ",
    "the lowest 1.0 means Bad, the highest 4.0 means Perfect/Real (the video is like a real video)",
    "Here is an output example:",
    "visual quality: 3.2",
    "temporal consistency: 2.7",
    "dynamic degree: 4.0",
    "text-to-video alignment: 2.3",
    "factual consistency: 1.8",
    "",
    'For this video, the text prompt is "{text_prompt}",',
    "all the frames of video are as follows:",
    "",
]


def test_the_template_is_the_model_cards_text_with_its_leading_and_trailing_newline():
    assert REGRESSION_QUERY_PROMPT == "\n".join(CARD_LINES)
    assert REGRESSION_QUERY_PROMPT.startswith("\nSuppose")
    assert REGRESSION_QUERY_PROMPT.endswith("are as follows:\n")


def test_the_eval_prompt_for_the_cards_sample_is_the_template_plus_one_image_token_per_frame():
    expected = "\n".join(CARD_LINES).replace("{text_prompt}", CARD_VIDEO_PROMPT) + "<image> " * 16

    assert build_eval_prompt(CARD_VIDEO_PROMPT, 16) == expected


def test_the_v1_1_recipe_appends_48_image_tokens_after_the_prompt():
    prompt = build_eval_prompt("a cat", 48)

    assert prompt.count("<image>") == 48
    assert prompt.endswith('all the frames of video are as follows:\n' + "<image> " * 48)


def test_image_tokens_already_in_the_users_prompt_count_towards_the_frames_as_in_the_card():
    prompt = build_eval_prompt("a <image> between words", 4)

    assert prompt.count("<image>") == 4
    assert prompt.endswith("as follows:\n" + "<image> " * 3)


def test_braces_quotes_and_unicode_in_the_users_prompt_pass_through_verbatim():
    text = 'a {weird} "quoted" prompt — ünïcode 日本語 {0}'

    assert f'the text prompt is "{text}",' in build_eval_prompt(text, 1)


def test_no_frames_means_no_image_tokens():
    assert build_eval_prompt("a cat", 0) == REGRESSION_QUERY_PROMPT.format(text_prompt="a cat")
