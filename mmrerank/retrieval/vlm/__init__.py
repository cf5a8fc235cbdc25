"""VLM first-stage embedders (single-vector and late-interaction) and their presets."""
