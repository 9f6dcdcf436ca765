"""Evaluation of the served models on labelled data."""
