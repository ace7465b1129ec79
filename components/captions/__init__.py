"""Caption components: offline region layers and caption building for MESA-style prompts."""
