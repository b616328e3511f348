"""Probes: each is an `async` function returning a ProbeResult; none raises for a failed check."""
