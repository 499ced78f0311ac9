"""The loss family: SSL and the baselines the paper compares against."""
