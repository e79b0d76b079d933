"""One module per figure family; each reads `runs.Run` objects and writes PNG + PDF."""
