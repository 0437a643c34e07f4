"""Task generators. Every sample is a pure function of (seed, split, index)."""
