"""posp: proof of sampling for untrusted inference compute."""
