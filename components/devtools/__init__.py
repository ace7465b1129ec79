"""Developer tools that look at the project's own code (not part of any pipeline stage)."""
