"""AgentNetBench: desktop trajectories, per-step scoring and the reference driver's protocol."""
