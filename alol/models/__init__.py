"""The model side: loading and saving, the one log-prob forward, generation, the value head."""
