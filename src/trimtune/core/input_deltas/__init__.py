"""The input-delta family's shared machinery: the host on the embedding and attention cache that prompt
tuning, P-tuning and prefix tuning put their deltas on, and their PEFT files."""
