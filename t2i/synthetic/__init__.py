"""The synthetic world of the tests, the demo and the benchmarks: face-like drawings whose captions say it all."""
