"""Workflows over embeddings: speaker verification, generated-speech statistics and comparison, their reports and pictures."""
