"""One module per pipeline; `intake` is the decoding step they share."""
