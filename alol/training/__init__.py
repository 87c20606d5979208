"""Training: the loop, checkpoints, the reference policy, advantages and sampling plans."""
