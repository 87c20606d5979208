"""Algorithms: offline losses, preference losses, PPO and the TRL bridge."""
