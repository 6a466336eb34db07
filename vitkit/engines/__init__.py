"""Runtimes that run exported files behind the nn.Module interface eval, predict and serve use."""
