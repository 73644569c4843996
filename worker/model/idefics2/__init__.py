"""VideoScore on Mantis-Idefics2 (VideoScore, -anno-only, -v1.1): mantis' sequence-classification head."""
