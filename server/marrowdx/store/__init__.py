"""Report persistence."""
