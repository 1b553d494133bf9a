"""Surrogate models (GP) and the featurizers that turn structures into their inputs."""
