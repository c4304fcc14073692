"""The Ray job: work items, a pool of model actors, progress and the driver that ties them together."""
