"""trm-lab's console and command line."""
