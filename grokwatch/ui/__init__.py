"""The Textual UI: a read-only view of a grokwatch store (never imports torch)."""
