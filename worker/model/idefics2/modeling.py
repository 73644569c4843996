"""The VideoScore network: transformers' own Idefics2 plus mantis' regression head, and nothing else.

This module owns the model class that the published VideoScore checkpoints load into. Mantis (the training
code) is not importable on transformers 5, so we rebuild its ``Idefics2ForSequenceClassification`` on top of
transformers' ``Idefics2Model``: same attribute names (``model.*``, ``score.*``) so the published state dicts
load with no missing or unexpected keys, the same pooling rule, and mantis' one numerical quirk (its perceiver
normalises with the text model's RMSNorm epsilon).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers import Idefics2Config, PreTrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig
from transformers.models.idefics2.modeling_idefics2 import Idefics2Model, Idefics2PreTrainedModel


def default_attn_implementation() -> str:
    """The attention kernel to ask for: SDPA where transformers supports it for Idefics2, else eager."""
    return "sdpa" if getattr(Idefics2PreTrainedModel, "_supports_sdpa", False) else "eager"


def apply_mantis_perceiver_eps(config: Idefics2Config) -> Idefics2Config:
    """Make the perceiver use the text model's RMSNorm epsilon, as mantis' vendored Idefics2 does.

    The published configs say 1e-6 for the perceiver and 1e-5 for the text model, but mantis built its
    perceiver norms from the text eps, and the weights were trained (and the published scores produced) that
    way. Changes ``config`` in place and returns it.
    """
    # Idefics2Config.__post_init__ has built both sub-configs (transformers types them dict | config | None).
    perceiver = cast(Idefics2PerceiverConfig, config.perceiver_config)
    perceiver.rms_norm_eps = cast(PreTrainedConfig, config.text_config).rms_norm_eps
    return config


def num_labels(config: PreTrainedConfig) -> int:
    """The number of scores the head outputs (``PreTrainedConfig.__post_init__`` always sets ``id2label``)."""
    if config.num_labels is None:
        raise ValueError("the config has no id2label, so no number of scores")
    return config.num_labels


def pooling_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor | int:
    """Mantis' rule for the position whose hidden state is scored, per row of ``input_ids``.

    With a pad id: one before the first pad token, modulo the sequence length (so a row with no padding, where
    argmax finds nothing and returns 0, wraps to the last position). Without a pad id: the last position,
    which is only unambiguous for a batch of one.
    """
    batch_size, seq_len = input_ids.shape
    if pad_token_id is None:
        if batch_size != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        return -1
    first_pad = torch.eq(input_ids, pad_token_id).int().argmax(-1)
    return (first_pad - 1) % seq_len


class VideoScoreForSequenceClassification(Idefics2PreTrainedModel):
    """Idefics2 with a linear regression head on the last non-pad token: one score per VideoScore aspect."""

    def __init__(self, config: Idefics2Config) -> None:
        # Before any module is built, so from_pretrained (hub id or local folder) gets mantis' perceiver eps.
        apply_mantis_perceiver_eps(config)
        super().__init__(config)
        self.num_labels = num_labels(config)
        self.model = Idefics2Model(config)
        # nn.Linear's default bias=True, as in mantis: the checkpoints carry score.weight and score.bias.
        self.score = nn.Linear(cast(PreTrainedConfig, config.text_config).hidden_size, self.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.text_model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        """Score a batch: ``logits`` has shape (batch, num_labels)."""
        # Scoring is a single forward; a KV cache would only cost memory.
        kwargs.setdefault("use_cache", False)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            pixel_attention_mask=pixel_attention_mask,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # transformers 5 configs only carry a top-level pad_token_id when the checkpoint's config.json sets one.
        index = pooling_index(input_ids, getattr(self.config, "pad_token_id", None))
        if isinstance(index, torch.Tensor):
            index = index.to(hidden_states.device)
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        # Pool first, then project: the head is row-wise, so this equals mantis' project-then-pool.
        logits = self.score(hidden_states[rows, index])
        return SequenceClassifierOutputWithPast(
            logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
