"""The annotate stage: a local teacher re-scores finished text and fills the top-k columns."""
