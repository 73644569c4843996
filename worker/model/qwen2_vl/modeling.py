"""VideoScore-Qwen2-VL: transformers 5's own Qwen2-VL towers plus mantis' regression head, and nothing else.

This module owns the model class that ``TIGER-Lab/VideoScore-Qwen2-VL`` loads into. The published checkpoint
was trained and is run by mantis-vl's ``Qwen2VLForSequenceClassification``
(TIGER-AI-Lab/Mantis, ``mantis/models/qwen2_vl/modeling_qwen2_vl.py``; the version mantis-vl 0.0.5 ships is
commit 465bc97, 2024-11-18), which only imports on transformers <= 4.46. We rebuild it on transformers 5's
``Qwen2VisionTransformerPretrainedModel`` and ``Qwen2VLTextModel``. What we reproduce, and where it comes from:

* **State-dict layout.** Mantis builds ``self.visual`` (the vision tower), ``self.model`` (transformers 4.46's
  ``Qwen2VLModel``, which in 4.46 is the *text* decoder: ``embed_tokens``, ``layers``, ``norm``) and
  ``self.score = nn.Linear(config.hidden_size, config.num_labels)`` -- bias included (nn.Linear's default).
  So the checkpoint's keys are ``visual.*``, ``model.embed_tokens.*``, ``model.layers.*``, ``model.norm.*``,
  ``score.weight`` and ``score.bias``; our attributes have the same names and load them with no missing or
  unexpected keys. (transformers 5's own ``Qwen2VLModel`` nests both towers under ``model.visual`` /
  ``model.language_model``; we do not use it, so no key renaming is involved.)
* **Positions: 1-D, not M-RoPE.** Mantis' ``forward`` embeds the tokens, scatters the vision features into the
  ``<|video_pad|>`` / ``<|image_pad|>`` positions, and calls the text decoder with ``position_ids=None``: it
  never calls its own ``get_rope_index``. transformers 4.46's decoder then uses ``cache_position``
  (``0 .. L-1``) for all three M-RoPE sections, i.e. plain 1-D rotary positions, video tokens included.
  The training path (mantis ``Qwen2VideoClassificationDataset`` -> the same ``forward``) does the same, so the
  weights were trained that way. transformers 5's ``Qwen2VLModel.forward`` would compute 3-D M-RoPE positions
  from ``mm_token_type_ids`` instead; we pass ``arange(L)`` explicitly. (tests/unit/test_qwen2_vl.py plants
  M-RoPE positions and shows the golden then fails by far more than its tolerance.)
* **Pooling.** Mantis projects every position and keeps, per row, the position one before the first pad
  token modulo the length (the last token of an unpadded row), or the last position when the config has no
  pad id (batch of one only) -- the same rule as the Idefics2 variant
  (``videoscore.worker.model.idefics2.modeling.pooling_index``).
  The head is row-wise, so we pool first and project one vector per row.
* **Vision features** are computed in the tower's dtype (mantis casts ``pixel_values_videos`` to it) and
  written into the video-pad positions in order.
* **No weight tying.** Mantis names ``score`` its output embeddings, so a config with
  ``tie_word_embeddings: true`` (Qwen2-VL-2B) would tie the head to the token embeddings; the published
  model is on Qwen2-VL-7B (``tie_word_embeddings: false``), and this class never ties.

The inference recipe that feeds this model (fps-8 sampling, qwen-vl-utils resizing, the chat template, the
Qwen2-VL image processor's video path) lives in ``videoscore.worker.model.qwen2_vl.recipe``.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers import Qwen2VLConfig
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLPreTrainedModel,
    Qwen2VLTextModel,
)

from videoscore.worker.model.idefics2.modeling import num_labels, pooling_index


def mantis_position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """Mantis' text positions: ``0 .. L-1`` for every row, shared by the three M-RoPE sections.

    Shape (batch, L). With right padding a row's own tokens keep the positions they have alone, so a video's
    scores do not depend on its batch.
    """
    batch_size, seq_len = input_ids.shape
    return torch.arange(seq_len, device=input_ids.device).unsqueeze(0).expand(batch_size, -1)


class VideoScoreQwen2VLForSequenceClassification(Qwen2VLPreTrainedModel):
    """Qwen2-VL with a linear regression head on the last non-pad token: one score per VideoScore aspect."""

    def __init__(self, config: Qwen2VLConfig) -> None:
        super().__init__(config)
        self.num_labels = num_labels(config)
        self.visual = Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config)
        self.model = Qwen2VLTextModel._from_config(config.text_config)
        # Qwen2VLConfig.__post_init__ has built the text config (transformers types it dict | config | None).
        text_config = cast(Qwen2VLTextConfig, config.text_config)
        # nn.Linear's default bias=True, as in mantis: the checkpoint carries score.weight and score.bias.
        self.score = nn.Linear(text_config.hidden_size, self.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def _scatter_vision(
        self,
        inputs_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        pixels: torch.Tensor | None,
        grid_thw: torch.Tensor | None,
        token_id: int,
    ) -> torch.Tensor:
        if pixels is None:
            return inputs_embeds
        pixels = pixels.to(self.visual.dtype)
        features = self.visual(pixels, grid_thw=grid_thw).pooler_output  # merged: one row per pad token
        mask = input_ids == token_id
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(
                f"{int(mask.sum())} placeholder tokens (id {token_id}) but {features.shape[0]} vision features"
            )
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        """Score a batch: ``logits`` has shape (batch, num_labels).

        ``position_ids`` defaults to mantis' 1-D positions; it exists so tests can show what other positions do.
        """
        kwargs.pop("mm_token_type_ids", None)  # transformers 5 processors add it; mantis' recipe never had it
        # Scoring is a single forward; a KV cache would only cost memory.
        kwargs.setdefault("use_cache", False)
        inputs_embeds = self.model.embed_tokens(input_ids)
        inputs_embeds = self._scatter_vision(
            inputs_embeds, input_ids, pixel_values, image_grid_thw, self.config.image_token_id
        )
        inputs_embeds = self._scatter_vision(
            inputs_embeds, input_ids, pixel_values_videos, video_grid_thw, self.config.video_token_id
        )
        if position_ids is None:
            position_ids = mantis_position_ids(input_ids)
        outputs = self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        hidden_states = outputs.last_hidden_state
        pad_id = getattr(self.config, "pad_token_id", None)
        index = pooling_index(input_ids, pad_id)
        if isinstance(index, torch.Tensor):
            index = index.to(hidden_states.device)
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        logits = self.score(hidden_states[rows, index])
        return SequenceClassifierOutputWithPast(
            logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
