"""The shared core: params, atomic output, devices, sharding, stage errors and logging, asset fetching."""
