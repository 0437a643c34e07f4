"""Dexter: three small stateful TRMs (memory, tool, reasoning) trained from an assistant's own records.

records.py reads the four raw formats, sample.py writes a synthetic set in them, vocab.py is the shared
vocabulary, dataset.py builds the three datasets, task.py serves them to the engine as ordinary tasks, and
api.py is what a host application imports.
"""
