"""Training, synthetic composition and export for the marrowdx models (needs torch)."""
