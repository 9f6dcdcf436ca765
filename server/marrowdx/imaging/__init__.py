"""Image decoding, validation and framing (no model or network code)."""
