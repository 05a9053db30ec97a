"""The core every layer builds on: record types, the store, the run clock, durations."""
