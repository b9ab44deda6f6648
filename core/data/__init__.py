"""Data: read the user's labelled texts, check them, split them and tokenize them.

Takes the files named in `data:` (through the data-source plugins, whose readers live here) and
hands on validated splits with one label set, and tokenized Arrow tables cached in the store.
"""
