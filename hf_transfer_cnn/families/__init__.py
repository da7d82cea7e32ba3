"""Model families that transformers does not ship (registered with the Auto classes on import)."""
