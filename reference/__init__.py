"""The model card reference: its pinned environment, the recipe, the golden generator and its output."""
