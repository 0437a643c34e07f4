"""trm-lab's training engine. Knows nothing of the console (never imports textual, lab or widgets)."""
