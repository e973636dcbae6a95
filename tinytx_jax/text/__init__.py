"""Text and its conversation format: dialogs, the character vocabulary, what users type."""
