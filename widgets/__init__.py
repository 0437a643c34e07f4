"""Reusable Textual panes for the lab console. They draw plain data (lists, dicts, Series) and
know nothing of torch or of the engine."""
