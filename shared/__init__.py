"""Code used by both sides of condex: data, models, wire format, privacy accounting, config."""
