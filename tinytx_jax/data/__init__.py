"""Data: corpora from files, their token cache, the train/validation split, window feeding."""
