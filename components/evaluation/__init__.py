"""Evaluation components: metrics of generated terrain (landform, colour, realism, coherence, diversity)."""
