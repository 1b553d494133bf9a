"""xtalforge."""
