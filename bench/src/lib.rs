//! Mosaic benchmarks: see `benches/` (criterion) and `scripts/` (end to end).
