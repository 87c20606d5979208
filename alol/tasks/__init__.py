"""Tasks: where each dataset comes from and how it becomes the canonical (prompt, completion) tables."""
