"""Tools to look at what a trained FAM-KD run learned."""
