"""VideoScore-Qwen2-VL: mantis' Qwen2VLForSequenceClassification and its published preprocessing recipe."""
