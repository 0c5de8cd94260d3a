"""Grounding: which similarity measure to trust, scored on the user's own population (:mod:`.run`)."""
