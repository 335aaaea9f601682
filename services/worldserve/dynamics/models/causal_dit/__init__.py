"""The Wan2.1-lineage causal video DiT model kind (placeholder: helper SERVE owns this file)."""
